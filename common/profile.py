"""Parameter, FLOP and latency measurements, and the ``para-test`` scripts of the numbered folders.

Three numbers get called "FLOPs" in this project's history (docs/architectures.md §2); every figure printed here names
its counter, input size and head size:

- :func:`thop_total`: ``thop.profile`` total (conv/linear MACs plus BatchNorm and pooling element operations), the
  number the original repository printed as "Total FLOPs";
- :func:`macs`: ``torch.utils.flop_counter.FlopCounterMode`` total / 2 (conv, linear, matmul, attention), the number
  papers call FLOPs;
- :func:`count_parameters`: ``numel()`` sum (thop's own parameter count misses tensors registered on containers).
"""
from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import thop
import torch
from thop.vision.basic_hooks import count_normalization, zero_ops
from thop.vision.calc_func import calculate_adaptive_avg
from timm.layers import BatchNormAct2d
from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
from timm.models.densenet import DenseNet
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common.constants import NUM_CLASSES
from common.engine import resolve_device
from common.errors import ArgumentParser, positive_int
from common.models import check_img_size, create_model, model_info

_RULE = "-" * 90


def count_parameters(model: nn.Module) -> int:
    """Number of parameters: the ``numel()`` sum over ``model.parameters()``."""
    return sum(p.numel() for p in model.parameters())


def _count_global_avg_pool(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    # thop's rule for nn.AdaptiveAvgPool{1,2,3}d: (pooled elements + 1 division) per output element.
    pooled = inputs[0].numel() // output.numel()
    module.total_ops += calculate_adaptive_avg(pooled, output.numel())


def _reference_thop_rules(model: nn.Module) -> dict:
    """thop rules that make timm's builds count like the implementations the project's figures come from.

    thop matches module types exactly and sees only modules, so the same network counts differently depending on
    which modules implement it. The original repository counted torchvision's DenseNet-121 and Cream/darmo's
    SSSTransformer; these rules make timm's equivalents count the same way, reproducing its figures exactly:

    - timm's DenseNet fuses BatchNorm and ReLU in ``BatchNormAct2d``, which thop skips: count it with thop's
      BatchNorm rule (ReLU counts 0 in thop anyway). Its ``nn.AdaptiveAvgPool2d`` head pooling counts 0, because
      torchvision pools with the functional ``F.adaptive_avg_pool2d``, which thop does not see. Result:
      2,895,997,440 for CheXNet at 224 (14 classes).
    - timm's Swin pools its NHWC tokens with ``FastAdaptiveAvgPool`` (a tensor mean), where Cream's
      SSSTransformer uses an ``nn.AdaptiveAvgPool1d`` module: count it with thop's AdaptiveAvgPool rule,
      768 x (49 + 1) = 38,400 more than timm's bare count. Result: 12,749,295,552 for AutoFormerV2-base at 224
      (1000 classes), the original's figure.

    The other networks already count as their references (OFA pools with tensor means in both implementations;
    timm's Visformer pools with ``nn.AdaptiveAvgPool2d`` like danczs').
    """
    if isinstance(model, DenseNet):
        return {BatchNormAct2d: count_normalization, nn.AdaptiveAvgPool2d: zero_ops}
    if isinstance(model, SwinTransformer):
        return {FastAdaptiveAvgPool: _count_global_avg_pool}
    return {}


def _example_input(model: nn.Module, img_size: int, batch: int = 1) -> torch.Tensor:
    reference = next(model.parameters())
    return torch.randn(batch, 3, img_size, img_size, device=reference.device, dtype=reference.dtype)


def thop_total(model: nn.Module, img_size: int, verbose: bool = False) -> float:
    """thop's total for one ``img_size`` x ``img_size`` image (batch 1, eval mode), as a float.

    A deep copy is profiled, because thop leaves ``total_ops``/``total_params`` buffers on the modules it hooks.
    timm's DenseNet and Swin are counted as the reference implementations the project's figures come from
    (torchvision, Cream; see ``_reference_thop_rules``). ``verbose`` lets thop print its ``[INFO]`` lines.
    """
    probe = copy.deepcopy(model).eval()
    total, _ = thop.profile(probe, inputs=(_example_input(probe, img_size),), custom_ops=_reference_thop_rules(probe),
                            verbose=verbose)
    return float(total)


def macs(model: nn.Module, img_size: int) -> int:
    """Multiply-accumulates for one image (batch 1, eval mode): ``FlopCounterMode`` total divided by 2."""
    # Restore each module's own mode afterwards (a caller may keep, say, frozen BatchNorms in eval mode).
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(_example_input(model, img_size))
    finally:
        for module, training in modes:
            module.training = training
    return counter.get_total_flops() // 2


def median_latency_ms(model: nn.Module, img_size: int, device: str | torch.device = "cpu",
                      repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in milliseconds of one forward pass on one image (eval mode, no grad) on ``device``.

    A copy of the model is moved to ``device``, so ``model`` itself is left where it is.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device).eval()
    x = _example_input(probe, img_size)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            synchronize()
            start = time.perf_counter()
            probe(x)
            # CUDA kernels run asynchronously: wait for them before reading the clock.
            synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


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
    if requested is None:
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [resolve_device(requested)]


def para_test_main(argv: Optional[Sequence[str]], model_name: str) -> None:
    """The ``para-test`` script of a numbered folder: parameter table, counts, FLOPs and latency of a model.

    First the original repository's lines, counted like it did (batch 1, thop, with the head size it used:
    ``model_info(model_name).original_count_classes``), then the 14-class figures where the original counted a
    1000-class head, MACs at ``--img-size`` and at the native resolution, the median latency of one image, and last
    onnxruntime's CPU latency of the same model exported to a temporary ONNX file.
    Random weights are used; nothing is downloaded. Run through :func:`common.errors.run_main`, e.g.
    ``sys.exit(run_main(functools.partial(para_test_main, model_name="chexnet")))``.
    """
    info = model_info(model_name)
    parser = ArgumentParser(
        prog=f"para-test ({model_name})",
        description=f"Parameters, thop total, MACs and latency of {model_name} (random weights, batch 1).")
    parser.add_argument("--img-size", type=positive_int, default=224,
                        help="square input size for the counts and the latency (default 224, as the original)")
    parser.add_argument("--device", default=None,
                        help="device for the latency (default: cpu, and also cuda when available)")
    parser.add_argument("--repeats", type=positive_int, default=20,
                        help="timed forward passes per device; the median is printed (default 20)")
    parser.add_argument("--quiet-thop", action="store_true", help="hide thop's [INFO] Register lines")
    args = parser.parse_args(argv)
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
        print(f"Median latency of one {size}x{size} image on {device} ({NUM_CLASSES}-class head, "
              f"median of {args.repeats} runs): {latency:.2f} ms")
    latency = onnx_latency_ms(model, size, repeats=args.repeats, warmup=min(3, args.repeats))
    print(f"Median latency of one {size}x{size} image with onnxruntime on cpu ({NUM_CLASSES}-class head, "
          f"exported ONNX, median of {args.repeats} runs): {latency:.2f} ms")


def onnx_latency_ms(model: nn.Module, img_size: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in milliseconds of onnxruntime (CPU) on one image, for ``model`` exported to a temporary
    ONNX file (:func:`common.onnx_export.export_onnx`, sigmoid included); the file is removed afterwards."""
    import tempfile

    import numpy as np

    from common.onnx_export import OnnxPredictor, export_onnx

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    probe = copy.deepcopy(model).cpu().eval()
    with tempfile.TemporaryDirectory(prefix="para-test-onnx-") as folder:
        path = export_onnx(probe, img_size, Path(folder) / "model.onnx")
        predictor = OnnxPredictor(path)
        image = np.random.default_rng(0).standard_normal((1, 3, img_size, img_size)).astype(np.float32)
        times = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            predictor.predict_array(image)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
