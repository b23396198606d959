"""Test model2.pth (OFA-595) on the test split: AUROC, F1, accuracy, sensitivity, specificity.

Usage: python test-model.py [--checkpoint FILE] [--data-dir PATH] [--tencrop] ... (--help for all)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.evaluate", model="ofa595", index=2, folder=Path(__file__).resolve().parent)
