"""Distil teacher K (model1..5.pth of folders 1-5) into EEEA-Net-C2; writes modeldK.pth here.

Usage: python train-model.py --teacher 1..5|all|ensemble [--teacher-mode cached|online] ... (--help for all)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.distill", folder=Path(__file__).resolve().parent)
