"""Distil teacher K (model1..5.pth of folders 1-5) into EEEA-Net-C2; writes modeldK.pth here.

Usage: python train-model.py --teacher 1..5|all|ensemble [--teacher-mode cached|online] ... (--help for all)
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
