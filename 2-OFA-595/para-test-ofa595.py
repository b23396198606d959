"""Parameter count, thop total, MACs and latency of OFA-595, in the original repository's format.

Usage: python para-test-ofa595.py [--img-size 224] [--device cpu] [--repeats 20]
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
