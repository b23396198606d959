"""Parameter, FLOP and latency measurements (printed by the ``para-test`` scripts, :mod:`common.commands.para_test`).

Three numbers get called "FLOPs" in this project's history (docs/architectures.md §2); every figure printed here names
its counter, input size and head size:

- :func:`thop_total`: ``thop.profile`` total (conv/linear MACs plus BatchNorm and pooling element operations), the
  number the original repository printed as "Total FLOPs";
- :func:`macs`: ``torch.utils.flop_counter.FlopCounterMode`` total / 2 (conv, linear, matmul, attention), the number
  papers call FLOPs;
- :func:`count_parameters`: ``numel()`` sum (thop's own parameter count misses tensors registered on containers).
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

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


def onnx_latency_ms(model: nn.Module, img_size: int, repeats: int = 20, warmup: int = 3,
                    threads: int | None = None) -> float:
    """Median wall time in milliseconds of onnxruntime (CPU) on one image, for ``model`` exported to a temporary
    ONNX file (:func:`common.inference.onnx.export_onnx`, sigmoid included); the file is removed afterwards.
    ``threads``: onnxruntime's intra-op threads (default: its own choice, one per core)."""
    import tempfile

    import numpy as np

    from common.inference.onnx import OnnxPredictor, export_onnx

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    probe = copy.deepcopy(model).cpu().eval()
    with tempfile.TemporaryDirectory(prefix="para-test-onnx-") as folder:
        path = export_onnx(probe, img_size, Path(folder) / "model.onnx")
        predictor = OnnxPredictor(path, threads=threads)
        image = np.random.default_rng(0).standard_normal((1, 3, img_size, img_size)).astype(np.float32)
        times = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            predictor.predict_array(image)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
