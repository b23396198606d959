"""Compare every model before and after distillation on one test split: tables, per-class AUROC, chart, bootstrap.

Usage: python test-model.py [--data-dir PATH] ... (--help for all)
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
