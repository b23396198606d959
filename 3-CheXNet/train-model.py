"""Train CheXNet (DenseNet-121) on ChestX-ray14; the best epoch by validation mean AUROC is saved as model3.pth here.

Usage: python train-model.py --data-dir PATH [--split official] [--pretrained imagenet|FILE] ... (--help for all)
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
