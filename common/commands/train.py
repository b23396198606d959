"""``train-model.py`` of folders 1-5: train one registered model on ChestX-ray14 with the BCE criterion."""
from __future__ import annotations

from pathlib import Path

from common.commands._cli import ArgumentParser
from common.commands._flags import add_data_arguments, add_training_arguments, make_paths_absolute, parse_args


def get_args_parser(prog: str = "train-model.py", description: str | None = None) -> ArgumentParser:
    """The training flags; defaults are documented against the original repository's settings."""
    parser = ArgumentParser(prog=prog, description=description)
    add_data_arguments(parser)
    add_training_arguments(parser)
    return parser


def main(argv=None, *, model: str, index: int, folder: Path | None = None) -> int:
    """``python train-model.py [flags]`` of folder ``index``: trains ``model`` and writes ``model<index>.pth``.

    The output goes to ``--output-dir`` or else to ``folder`` (the script's own folder).
    """
    prefix = f"model{index}"
    from common.models import model_info
    name = model_info(model).display_name
    args = parse_args(get_args_parser(description=f"Train {name} on ChestX-ray14; writes {prefix}.pth"), argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.commands._setup import setup_training
    from common.engine.loop import SupervisedCriterion
    from common.engine.losses import LabelLoss, pos_weight_for
    from common.runs.layout import output_dir_for
    make_paths_absolute(args)
    run = setup_training(args, model, prefix, output_dir_for(args.output_dir, folder), init_source=args.pretrained)
    if run.finished:
        return 0
    try:
        weight = pos_weight_for(args.pos_weight, run.data.split.parts["train"].labels)
        criterion = SupervisedCriterion(LabelLoss(pos_weight=None if weight is None else weight.to(run.device)))
        run.fit(criterion, args)
    finally:
        run.release()
    return 0
