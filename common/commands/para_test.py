"""``para-test-*.py``: the parameter table, parameter count, thop total, MACs and latency of a model, in the original
repository's printed format.
"""
from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Optional, Sequence

from common.commands._cli import ArgumentParser, positive_int
from common.constants import NUM_CLASSES

if TYPE_CHECKING:  # annotations only: torch is imported after the flags are parsed
    import torch
    from torch import nn

_RULE = "-" * 90


def _print_parameter_table(model: nn.Module) -> int:
    # The original's table: titles centred in 32/42/12-character cells, rows left-aligned in 30/40/10 (never cut).
    print(_RULE)
    print("|" + " " * 11 + "weight name" + " " * 10 + "|" + " " * 15 + "weight shape" + " " * 15 + "|"
          + " " * 3 + "number" + " " * 3 + "|")
    print(_RULE)
    total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        print(f"| {name.ljust(30)} | {str(param.shape).ljust(40)} | {str(param.numel()).ljust(10)} |")
    print(_RULE)
    return total


def _latency_devices(requested: Optional[str]) -> list[torch.device]:
    """``--device`` given: that device (checked); not given: the CPU, and CUDA as well when there is one."""
    import torch

    from common.runtime.device import resolve_device
    if requested is None:
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [resolve_device(requested)]


def para_test_main(argv: Optional[Sequence[str]], model_name: str) -> None:
    """The ``para-test`` script of a numbered folder: parameter table, counts, FLOPs and latency of a model.

    First the original repository's lines, counted like it did (batch 1, thop, with the head size it used:
    ``model_info(model_name).original_count_classes``), then the 14-class figures where the original counted a
    1000-class head, MACs at ``--img-size`` and at the native resolution, the median latency of one image, and last
    onnxruntime's CPU latency of the same model exported to a temporary ONNX file.
    Random weights are used; nothing is downloaded. Run through :func:`common.commands._cli.run_main`, e.g.
    ``sys.exit(run_main(functools.partial(para_test_main, model_name="chexnet")))``.
    """
    from common.models import model_info
    parser = ArgumentParser(
        prog=f"para-test ({model_name})",
        description=f"Parameters, thop total, MACs and latency of {model_info(model_name).display_name} (random "
                    "weights, batch 1).")
    parser.add_argument("--img-size", type=positive_int, default=224,
                        help="square input size for the counts and the latency (default 224, as the original)")
    parser.add_argument("--device", default=None,
                        help="device for the latency (default: cpu, and also cuda when available)")
    parser.add_argument("--repeats", type=positive_int, default=20,
                        help="timed forward passes per device; the median is printed (default 20)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="intra-op threads of the CPU latencies, torch and onnxruntime alike (default: one per "
                             "core this process may use; printed in each latency line)")
    parser.add_argument("--quiet-thop", action="store_true", help="hide thop's [INFO] Register lines")
    args = parser.parse_args(argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    import torch

    from common.models import check_img_size, create_model, model_info
    from common.models.profile import count_parameters, macs, median_latency_ms, onnx_latency_ms, thop_total
    from common.runtime.threads import available_cores
    # The thread rule with no loader: every core is the model's, unless --threads says otherwise. A latency is only
    # comparable at a stated thread count, so each line says it.
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    info = model_info(model_name)
    check_img_size(model_name, args.img_size)
    devices = _latency_devices(args.device)
    size = args.img_size
    original_classes = info.original_count_classes

    # --- The original script's output, with its head size.
    original_model = create_model(model_name, num_classes=original_classes, img_size=size).eval()
    n_params = _print_parameter_table(original_model)
    print(f"The total number of parameters: {n_params}")
    print(f"The parameters of Model {info.display_class_name}: {n_params / 1000 / 1000:4f}M")
    if info.prints_comma_total:
        # The original EEEA script's summary line, full-width comma included.
        print(f"The total number of parameters: {n_params}，{n_params / 1000 / 1000:4f}M")
    print(_RULE)
    quiet = contextlib.redirect_stdout(io.StringIO()) if args.quiet_thop else contextlib.nullcontext()
    with quiet:
        original_flops = thop_total(original_model, size, verbose=True)
    print(f"Total FLOPs: {original_flops}")

    # --- What the original did not print.
    print(_RULE)
    label = f"{size}x{size}, batch 1"
    print(f"The counts above use a {original_classes}-class head at {label}; "
          "'Total FLOPs' is thop's total (MACs plus BatchNorm/pooling operations, no attention products).")
    if original_classes != NUM_CLASSES:
        original_model.reset_classifier(NUM_CLASSES)
        model = original_model
        print(f"Parameters with a {NUM_CLASSES}-class head: {count_parameters(model)} "
              f"({count_parameters(model) / 1e6:.6f}M)")
        print(f"thop total with a {NUM_CLASSES}-class head at {label}: {thop_total(model, size)}")
    else:
        model = original_model
    print(f"MACs (FlopCounterMode / 2) with a {NUM_CLASSES}-class head at {label}: {macs(model, size)}")
    if info.fixed_input_size:
        # Why the same network shows several counts: head size, and position tables sized by the input.
        print(f"{info.display_name}'s parameter count also depends on the input size (its position embeddings or "
              f"relative-position tables are sized for it): the counts above are at {size}x{size}; a checkpoint "
              "trained at another --img-size, as the comparison lists it, has another count")
    if info.native_size != size:
        native_model = (create_model(model_name, num_classes=NUM_CLASSES, img_size=info.native_size).eval()
                        if info.fixed_input_size else model)
        print(f"MACs (FlopCounterMode / 2) with a {NUM_CLASSES}-class head at the native "
              f"{info.native_size}x{info.native_size}, batch 1: {macs(native_model, info.native_size)}")
    for device in devices:
        # A few untimed runs first (cuDNN autotuning, allocator warm-up); never more than the timed ones.
        latency = median_latency_ms(model, size, device, repeats=args.repeats, warmup=min(3, args.repeats))
        used = f"{torch.get_num_threads()} torch thread(s), " if device.type == "cpu" else ""
        print(f"Median latency of one {size}x{size} image on {device} ({NUM_CLASSES}-class head, {used}"
              f"median of {args.repeats} runs): {latency:.2f} ms")
    latency = onnx_latency_ms(model, size, repeats=args.repeats, warmup=min(3, args.repeats), threads=threads)
    print(f"Median latency of one {size}x{size} image with onnxruntime on cpu ({NUM_CLASSES}-class head, "
          f"exported ONNX, {threads} onnxruntime thread(s), median of {args.repeats} runs): {latency:.2f} ms")
