"""Folder 6 ``train-model.py``: distil teachers (model1..5.pth) into EEEA-Net-C2 with the one engine; the criterion
comes from :mod:`common.engine.distill`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from common.commands._cli import ArgumentParser, positive_float, unit_fraction
from common.commands._flags import add_data_arguments, add_training_arguments, make_paths_absolute, parse_args
from common.constants import STUDENT_MODEL
from common.errors import UserError

if TYPE_CHECKING:  # annotations only: the heavy modules are imported after the flags are parsed
    from common.commands._setup import TrainingRun
    from common.data.split_data import SplitData
    from common.engine.distill import DistillationCriterion, Teacher


def get_args_parser() -> ArgumentParser:
    """Training flags plus the teacher, loss and cache flags of the distillation folder."""
    from common.models import model_folders
    parser = ArgumentParser(prog="train-model.py",
                            description="Distil a teacher (model1..5.pth) into EEEA-Net-C2 (modeldK.pth)")
    add_data_arguments(parser)
    add_training_arguments(parser)
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", required=True, choices=[*map(str, model_folders()), "all", "ensemble"],
                       help="teacher folder K (its modelK.pth), all (1..5 in turn) or ensemble (all at once)")
    group.add_argument("--teacher-checkpoint", default=None,
                       help="teacher file to use instead of ../K-*/modelK.pth (single teacher only)")
    group.add_argument("--teachers-root", default=None,
                       help="folder holding 1-EEEA-Net-C2 ... 5-AutoFormerV2-base (default: the parent of "
                            "--output-dir, i.e. the repository)")
    group.add_argument("--teacher-mode", choices=("online", "cached"), default="online",
                       help="online: teachers see the student's augmented batch (exact, slower); cached: teacher "
                            "logits computed once on the eval view of each training image (fast); default online, "
                            "so type --teacher-mode cached on every student you compare")
    group.add_argument("--cache-dir", default=None, help="teacher-logit cache folder (default: OUTPUT/teacher-cache)")
    group.add_argument("--alpha", type=unit_fraction, default=0.5,
                       help="weight of the hard-label BCE; 1 - alpha weighs the KD term (default 0.5, the original's)")
    group.add_argument("--temperature", type=positive_float, default=2.0, help="KD temperature T (default 2)")
    group.add_argument("--ensemble-weights", choices=("uniform", "auroc"), default="uniform",
                       help="ensemble: average teacher probabilities uniformly or per class by validation AUROC "
                            "(default uniform)")
    group.add_argument("--student-init", default=None,
                       help="start the student from this EEEA-Net-C2 checkpoint (e.g. ../1-EEEA-Net-C2/model1.pth)")
    return parser


def build_criterion(teachers: list[Teacher], run: TrainingRun, args, cache_dir: Path) -> DistillationCriterion:
    """The distillation criterion of a student run: the KD loss and where its teacher logits come from."""
    from common.engine.distill import CachedTeachers, DistillationCriterion, OnlineTeachers, build_or_load_cache
    from common.engine.losses import MultiLabelKDLoss, auroc_teacher_weights, pos_weight_for
    weights = None
    if len(teachers) > 1 and args.ensemble_weights == "auroc":
        weights = auroc_teacher_weights([t.checkpoint["val_auroc"] for t in teachers]).to(run.device)
    pos_weight = pos_weight_for(args.pos_weight, run.data.split.parts["train"].labels)
    kd_loss = MultiLabelKDLoss(alpha=args.alpha, temperature=args.temperature,
                               pos_weight=None if pos_weight is None else pos_weight.to(run.device),
                               teacher_weights=weights)
    if args.teacher_mode == "online":
        source = OnlineTeachers(teachers, run.info.mean, run.info.std, run.device)
    else:
        batch_size = args.eval_batch_size or 2 * args.batch_size
        source = CachedTeachers([build_or_load_cache(t, run.data, cache_dir, batch_size, run.device, run.amp_dtype,
                                                     run.distributed) for t in teachers], run.device)
    return DistillationCriterion(kd_loss, source)


def distil(args, teacher_indices: list[int] | None, paths: list[Path], prefix: str, output_dir: Path,
           data: SplitData | None = None, first: bool = True) -> dict:
    """Load the teachers at ``paths`` and train one student ``<prefix>.pth`` against them (``first``: the first
    student of the command, which says what applies to every student once)."""
    from common.commands._setup import selected_or_tested, setup_training
    from common.engine.distill import Teacher
    from common.runs.identity import check_unseen_patients, differences, seen_patients
    args = copy.copy(args)  # a resumed student takes its own recorded flags; --teacher all runs several
    # load_pretrained prints "=> loaded <file> into eeea_c2" when the student's starting checkpoint is in.
    # The student's start is checked by patients there too, and its record travels into the student's.
    run = setup_training(args, STUDENT_MODEL, prefix, output_dir, init_source=args.student_init or args.pretrained,
                         data=data, init_flag="--student-init" if args.student_init else "--pretrained",
                         announce_random_init=first)
    if run.finished:
        return run.finished
    try:
        teachers = [Teacher(p, i) for p, i in zip(paths, teacher_indices or [None] * len(paths))]
        for teacher in teachers:
            # The student learns what the teacher learnt from its patients: they join the student's record.
            seen = seen_patients(teacher.checkpoint, teacher.path, via="teacher")
            check_unseen_patients(teacher.path, teacher.checkpoint, selected_or_tested(run.data.split), "teacher",
                                  seen=seen)
            run.inherited_patients.append(seen)
        distillation = {"teachers": [t.describe() for t in teachers], "alpha": args.alpha,
                        "temperature": args.temperature, "teacher_mode": args.teacher_mode,
                        "ensemble_weights": args.ensemble_weights if len(teachers) > 1 else None,
                        "student_init": args.student_init}
        run.identity["recipe"]["distillation"] = {
            **{k: distillation[k] for k in ("alpha", "temperature", "teacher_mode", "ensemble_weights")},
            "teachers": [{"index": t.index, "sha256": t.sha256} for t in teachers]}
        if run.resume_state is not None:
            recorded = (run.resume_state.get("identity") or {}).get("recipe", {}).get("distillation", {})
            found = differences(recorded, run.identity["recipe"]["distillation"],
                                ("teachers", "alpha", "temperature", "teacher_mode", "ensemble_weights"),
                                describe=lambda key: ("teacher files (index, sha256)" if key == "teachers"
                                                      else f"--{key}"))
            if found:
                raise UserError(f"--resume: {run.resume_state['path']} distilled another way: {'; '.join(found)}")
        cache_dir = Path(args.cache_dir) if args.cache_dir else output_dir / "teacher-cache"
        return run.fit(build_criterion(teachers, run, args, cache_dir), args,
                       extra_metadata={"distillation": distillation})
    finally:
        run.release()


def main(argv=None, *, folder: Path | None = None) -> int:
    """``python train-model.py --teacher 1..5|all|ensemble`` of folder 6 (``folder``: the script's folder)."""
    args = parse_args(get_args_parser(), argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.commands._setup import training_data
    from common.models import model_folders
    from common.runs.layout import folder_model_path, output_dir_for, teachers_root
    make_paths_absolute(args)
    if args.student_init and args.pretrained:
        raise UserError("--student-init and --pretrained both set the student's start; give one of them")
    output_dir = output_dir_for(args.output_dir, folder)
    root = teachers_root(args.teachers_root, output_dir)
    if args.teacher_checkpoint and args.teacher in ("all", "ensemble"):
        raise UserError(f"--teacher-checkpoint names one teacher file; it cannot be used with --teacher {args.teacher}")
    if args.teacher == "all" and args.resume not in (None, "auto"):
        raise UserError(f"--resume {args.resume}: with --teacher all each student resumes from its own "
                        "modeldK-last.pth; pass --resume without a file")
    folders = model_folders()
    if args.teacher not in ("all", "ensemble"):
        index = int(args.teacher)
        path = Path(args.teacher_checkpoint) if args.teacher_checkpoint else folder_model_path(root, index)
        if not path.is_file():
            raise UserError(f"=> no teacher_checkpoint found: {path} (train folder {folders[index][0]} first "
                            "or pass --teacher-checkpoint)")
        distil(args, [index], [path], f"modeld{index}", output_dir)
        return 0
    available = {}
    for index in folders:
        path = folder_model_path(root, index)
        if path.is_file():
            available[index] = path
        else:
            print(f"=> no teacher_checkpoint found for teacher {index}: {path} (skipped)")
    if not available:
        raise UserError(f"no teacher checkpoints under {root} (expected e.g. "
                        f"{folder_model_path(root, min(folders))}); train folders {min(folders)}-{max(folders)} first")
    if args.teacher == "ensemble":
        distil(args, list(available), list(available.values()), "modeld-ensemble", output_dir)
        return 0
    data = training_data(args)  # index the images once for all the teachers
    for position, (index, path) in enumerate(available.items()):
        print(f"=== distilling teacher {index} ({path}) into EEEA-Net-C2 -> modeld{index}.pth ===")
        distil(args, [index], [path], f"modeld{index}", output_dir, data=data, first=position == 0)
    return 0
