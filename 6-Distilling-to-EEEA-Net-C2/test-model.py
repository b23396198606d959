"""Compare every model before and after distillation on one test split: tables, per-class AUROC, chart, bootstrap.

Usage: python test-model.py [--data-dir PATH] ... (--help for all)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.compare", folder=Path(__file__).resolve().parent)
