"""``test-model.py`` of folders 1-5: evaluate a checkpoint on the test part of its split, write results beside it."""
from __future__ import annotations

from pathlib import Path

from .arguments import add_evaluation_arguments, make_paths_absolute
from .errors import ArgumentParser, UserError
from .scoring import evaluate_checkpoint, print_result, write_results


def get_args_parser(prog: str = "test-model.py", description: str | None = None) -> ArgumentParser:
    """Flags of the test scripts; split and label file default to the ones the checkpoint was trained with."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--checkpoint", default=None, help="checkpoint to test (default: modelK.pth of this folder)")
    add_evaluation_arguments(parser)
    return parser


def main(argv=None, *, model: str, index: int, folder: Path | None = None) -> int:
    """``python test-model.py [flags]`` of folder ``index``: tests ``model<index>.pth`` (a ``model`` network).

    The checkpoint is ``--checkpoint`` or else ``model<index>.pth`` in ``folder`` (the script's own folder).
    """
    prefix = f"model{index}"
    args = get_args_parser(description=f"Test {prefix}.pth ({model}) on the test split").parse_args(argv)
    make_paths_absolute(args)
    if args.checkpoint is None and folder is None:
        raise UserError("no checkpoint: pass --checkpoint")
    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(folder) / f"{prefix}.pth"
    print("=> loading checkpoint")
    result = evaluate_checkpoint(checkpoint, model, None, args)
    print("=> loaded checkpoint")
    print_result(result)
    paths = write_results(result)
    print("results written: " + ", ".join(str(p) for p in paths.values()))
    return 0
