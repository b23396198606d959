"""Parameter count, thop total, MACs and latency of Visformer-small, in the original repository's format.

Usage: python para-test-visformer-small.py [--img-size 224] [--device cpu] [--repeats 20]
"""
import sys

from common.commands._cli import run_main
from common.commands.para_test import para_test_main

if __name__ == "__main__":
    sys.exit(run_main(para_test_main, sys.argv[1:], model_name="visformer_small"))
