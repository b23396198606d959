"""Parameter count, thop total, MACs and latency of EEEA-Net-C2, in the original repository's format.

Usage: python para-test-eeeac2.py [--img-size 224] [--device cpu] [--repeats 20]
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
