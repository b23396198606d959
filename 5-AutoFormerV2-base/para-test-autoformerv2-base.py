"""Parameter count, thop total, MACs and latency of AutoFormerV2-base (S3-B), in the original repository's format.

Usage: python para-test-autoformerv2-base.py [--img-size 224] [--device cpu] [--repeats 20]
"""
import sys

from common.cli import folder_main

if __name__ == "__main__":
    sys.exit(folder_main(__file__, sys.argv[1:]))
