"""``python -m common.commands.web_export``: write the static browser page of one checkpoint (also ``predict.py
--export-web DIR``). Serve the folder with ``python -m http.server`` and open it: the model runs in the browser and
the image never leaves the machine (docs/guide/browser.md)."""
from __future__ import annotations

import sys

from common.commands._cli import ArgumentParser, positive_int, run_main


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m common.commands.web_export",
                            description="Export a checkpoint as a static web page that predicts the 14 findings, "
                                        "with Grad-CAM heatmaps, in the browser (onnxruntime-web, WebAssembly).")
    parser.add_argument("--checkpoint", required=True, help="checkpoint to export (modelK.pth, modeldK.pth, ...)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write (absent, empty, or a previous export, which is replaced)")
    parser.add_argument("--onnxruntime-web", default=None, metavar="DIR",
                        help="onnxruntime-web's dist folder (default: web/node_modules/onnxruntime-web/dist of "
                             "this repository, filled by `npm ci --prefix web`)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads for the export and its check (default: the thread rule)")
    return parser


def main(argv=None) -> int:
    """Export ``--checkpoint`` into ``--out``; prints what was written and the check against PyTorch."""
    args = get_args_parser().parse_args(argv)
    # Imported after parsing: --help must not import torch.
    from common.explain.browser_export import export_browser_folder
    from common.runtime.threads import apply_thread_choice

    apply_thread_choice(0, args.threads, cached=False)
    done = export_browser_folder(args.checkpoint, args.out, args.onnxruntime_web)
    print(done.summary())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
