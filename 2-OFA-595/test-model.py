"""Test model2.pth (OFA-595) on the test split: AUROC, F1, accuracy, sensitivity, specificity.

Usage: python test-model.py [--checkpoint FILE] [--data-dir PATH] [--tencrop] ... (--help for all)
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
