"""Train AutoFormerV2-base (S3-B) on ChestX-ray14; the best epoch by validation mean AUROC is saved as model5.pth here.

Usage: python train-model.py --data-dir PATH [--split official] [--pretrained imagenet|FILE] ... (--help for all)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.train", model="autoformerv2_base", index=5, folder=Path(__file__).resolve().parent)
