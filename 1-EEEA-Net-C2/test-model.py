"""Test model1.pth (EEEA-Net-C2) on the test split: AUROC, F1, accuracy, sensitivity, specificity.

Usage: python test-model.py [--checkpoint FILE] [--data-dir PATH] [--tencrop] ... (--help for all)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.evaluate", model="eeea_c2", index=1, folder=Path(__file__).resolve().parent)
