"""``python -m common.image_cache``: build the image cache for a data folder."""
from __future__ import annotations

import os
import sys
import time

from common.commands._cli import ArgumentParser, positive_int, run_main
from common.data.images import index_images
from common.errors import UserError


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def get_args_parser() -> ArgumentParser:
    from common.data.image_cache import DEFAULT_SIZE
    parser = ArgumentParser(prog="python -m common.image_cache",
                            description="Decode the CXR8 PNGs once into a memory-mapped uint8 image cache that "
                                        "training, evaluation, distillation and comparison read with --image-cache.")
    parser.add_argument("--data-dir", default=None, help="folder holding the PNGs (default: $CXR8_DATA_DIR)")
    parser.add_argument("--out", required=True, help="cache folder (created; several sizes can share it: each command reads the size its "
                             "model is evaluated at, or the one --cache-size names)")
    parser.add_argument("--size", type=positive_int, default=DEFAULT_SIZE,
                        help="stored side S in pixels: 256 (default; the eval view of the 224-px input all five "
                             "models train at by default) or 512 (if you train with --img-size 448); 7.3 GB / 29 GB "
                             "for the whole data set")
    parser.add_argument("--workers", type=positive_int, default=None, help="decoding processes (default: all cores)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", default="official",
                       help="cache the images of this split: official (default), arnoweng or a list folder")
    which.add_argument("--all", action="store_true", help="cache every PNG under --data-dir")
    parser.add_argument("--label-file", default=None, help="labels of the split (2017, v2020 or a Data_Entry CSV)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="as for training (default 0.1; does not change the images)")
    parser.add_argument("--seed", type=int, default=0, help="as for training (default 0; does not change the images)")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.data.cache_build import build_image_cache
    from common.data.image_cache import SIZES
    from common.data.splits import build_split
    data_dir = args.data_dir or os.environ.get("CXR8_DATA_DIR")
    if not data_dir:
        raise UserError("no image folder: pass --data-dir (the folder holding the CXR8 PNGs) or set CXR8_DATA_DIR")
    if args.size not in SIZES:
        print(f"note: --size {args.size} is neither 256 nor 512; the cached eval view equals the PNG one only for "
              f"models whose eval resize is {args.size}")
    if args.all:
        names = sorted(index_images(data_dir))
        print(f"caching all {len(names):,} PNGs under {data_dir}")
    else:
        split = build_split(args.split, args.label_file, args.val_fraction, args.seed)
        names = sorted({name for part in split.parts.values() for name in part.names})
        print(f"caching the {len(names):,} images of {split.describe()}")
    start = time.perf_counter()
    cache = build_image_cache(data_dir, names, args.out, size=args.size, workers=args.workers)
    print(f"done in {time.perf_counter() - start:.1f} s: {cache}")


if __name__ == "__main__":
    sys.exit(run_main(main))
