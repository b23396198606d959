"""``python -m common.synthetic OUT_DIR``: write a synthetic CXR8-format data set."""
from __future__ import annotations

import sys
import time

from common.commands._cli import ArgumentParser, positive_int, run_main


def main(argv=None):
    """Command line: ``python -m common.synthetic OUT_DIR [--patients N] [--image-size S] [--seed K]
    [--label-structure plain|nih]``."""
    parser = ArgumentParser(prog="python -m common.synthetic",
                            description="Write a small synthetic ChestX-ray14 data set in the real file formats.")
    parser.add_argument("out_dir", help="target directory (absent, empty, or a previous synthetic set)")
    parser.add_argument("--patients", type=positive_int, default=240, help="number of patients (default 240)")
    parser.add_argument("--image-size", type=positive_int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--label-structure", choices=("plain", "nih"), default="plain",
                        help="plain: independent findings, exact labels; nih: findings co-occur as in the packaged "
                             "Data_Entry file and the training list's labels are flipped at the published "
                             "text-mining precision and recall (Wang et al. 2017), validation and test lists clean "
                             "(default plain)")
    args = parser.parse_args(argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.data.synthetic import generate_synthetic_cxr8
    start = time.perf_counter()
    summary = generate_synthetic_cxr8(args.out_dir, num_patients=args.patients, image_size=args.image_size,
                                      seed=args.seed, label_structure=args.label_structure)
    print(f"Wrote {summary['num_images']} images of {summary['num_patients']} patients to {summary['out_dir']} "
          f"in {time.perf_counter() - start:.1f} s")
    print(f"No Finding: {summary['no_finding']} images")
    noise = summary.get("label_noise")
    for name, count in summary["positives"].items():
        extra = ""
        if noise:
            row = noise[name]
            extra = (f"; training list {row['clean_positives']} true -> {row['noisy_positives']} noisy "
                     f"(precision {_fmt(row['realised_precision'])}, recall {_fmt(row['realised_recall'])})")
        print(f"{name}: {count} positive images{extra}")
    if noise:
        print("training labels flipped at Wang et al. 2017's text-mining precision and recall; validation, test and "
              "Data_Entry labels are clean")


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(run_main(main))
