"""Parameter count, thop total, MACs and latency of AutoFormerV2-base (S3-B), in the original repository's format.

Usage: python para-test-autoformerv2-base.py [--img-size 224] [--device cpu] [--repeats 20]
"""

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.para_test:para_test_main", model_name="autoformerv2_base")
