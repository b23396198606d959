"""Test model5.pth (AutoFormerV2-base (S3-B)) on the test split: AUROC, F1, accuracy, sensitivity, specificity.

Usage: python test-model.py [--checkpoint FILE] [--data-dir PATH] [--tencrop] ... (--help for all)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.evaluate", model="autoformerv2_base", index=5, folder=Path(__file__).resolve().parent)
