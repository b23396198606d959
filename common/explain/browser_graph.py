"""The ONNX graph of the browser page: the evaluation normalisation, the network, its Grad-CAM heatmaps of every class
and, when the checkpoint carries the statistics, its out-of-distribution score, all in one graph.

Inputs and outputs (``N`` images, ``C`` classes, side ``s``)::

    crop           uint8 [N, 1, s, s]   the grey evaluation crop (resize + centre crop done by the page)
    probabilities  float [N, C]         sigmoid of the logits, as ``predict.py --onnx``
    heatmaps       float [N, C, s, s]   Grad-CAM of each class in [0, 1], as ``predict.py --cam``  (if supported)
    ood_score      float [N]            the out-of-distribution score of common.inference.ood  (if there are
                                        statistics: checkpoint["ood"] or <stem>-ood.json)

Why the normalisation is in the graph and the resize is not: ``x / 255``, ``- mean`` and ``/ std`` are float32
operations that every runtime does alike, so putting them here makes the page and Python agree to the bit on them.
The resize is PIL's antialiased bilinear filter on 8-bit images (fixed-point coefficients, the horizontal pass
rounded to 8 bits before the vertical one); ONNX's ``Resize`` (even with ``antialias``, opset 18) works in float and
differs by up to a grey level, so the page reproduces PIL's integer algorithm exactly instead (docs/guide/browser.md).

Grad-CAM in the graph. Grad-CAM's channel weights are the spatial mean of ``d logit_c / d A`` at the CAM layer ``A``
(the registry entry's ``cam_layer``). Where the head after that layer is small, that gradient is written as
explicit operations (no autograd in ONNX), per ``ModelInfo.cam_head``:

- ``pool_mix_linear`` (EEEA-Net-C2, OFA-595): ``p = mean(A)``, ``u = W_mix p``, ``logit = W_cls hswish(u) + b``, so
  ``d logit / d A_k(i, j) = (W_cls diag(hswish'(u)) W_mix)_ck / (h w)`` at every position;
- ``pool_linear`` (CheXNet): ``W_cls[c, k] / (h w)`` (Grad-CAM equals CAM);
- ``norm_pool_linear`` (Visformer-small): BatchNorm in eval mode is a per-channel affine map, so
  ``W_cls[c, k] gamma_k / sqrt(var_k + eps) / (h w)``.

Then the ``grad-cam`` package's own post-processing is repeated: ReLU of the weighted sum, min-max scaling, bilinear
upsampling to ``s x s`` (``cv2.resize``: half-pixel centres, edges clamped, as ONNX ``Resize`` with PyTorch's
half-pixel rule), min-max again and the clip of :func:`common.explain.gradcam.gradcam_maps`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from common.inference.onnx import export_traced
from common.inference.ood import OOD_OUTPUT_NAME, check_ood_statistics, ood_score_module
from common.models import model_info

CROP_INPUT = "crop"
PROBABILITIES_OUTPUT = "probabilities"
HEATMAPS_OUTPUT = "heatmaps"
OOD_OUTPUT = OOD_OUTPUT_NAME
# grad-cam's scale_cam_image adds this to the maximum before dividing (pytorch_grad_cam.utils.image).
GRADCAM_EPSILON = 1e-7


def heatmap_supported(model_name: str) -> bool:
    """True when the browser graph of ``model_name`` computes Grad-CAM heatmaps (its ``cam_head`` is written)."""
    return model_info(model_name).cam_head in _HEADS


def _hardswish_derivative(u: torch.Tensor) -> torch.Tensor:
    # PyTorch's hardswish_backward: 0 below -3, x / 3 + 1/2 on [-3, 3], 1 above 3.
    return torch.where(u < -3, torch.zeros_like(u), torch.where(u <= 3, u / 3 + 0.5, torch.ones_like(u)))


def _pool_mix_linear(model: nn.Module, activations: torch.Tensor) -> torch.Tensor:
    """``[N, C, K]`` gradients of the logits w.r.t. the pooled CAM-layer features of an OFA MobileNetV3 head."""
    pooled = activations.mean(3, keepdim=True).mean(2, keepdim=True)   # the head's own pooling order
    mix = model.feature_mix_layer.conv
    if not isinstance(model.feature_mix_layer.act, nn.Hardswish) or mix.bias is not None:
        raise UserError("this OFA head is not conv (no bias) + hard-swish; its Grad-CAM is not written in the graph")
    u = mix(pooled).flatten(1)                                          # [N, D]
    w_cls = model.get_classifier().weight                                # [C, D]
    w_mix = mix.weight.flatten(1)                                        # [D, K]
    return torch.matmul(w_cls[None] * _hardswish_derivative(u)[:, None, :], w_mix)


def _pool_linear(model: nn.Module, activations: torch.Tensor) -> torch.Tensor:
    weight = model.get_classifier().weight                               # [C, K]
    return weight[None].expand(activations.shape[0], -1, -1)


def _norm_pool_linear(model: nn.Module, activations: torch.Tensor) -> torch.Tensor:
    norm = model.norm
    if not isinstance(norm, nn.BatchNorm2d):
        raise UserError(f"the norm after the CAM layer is {type(norm).__name__}, not BatchNorm2d; its Grad-CAM is not "
                        "written in the graph")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)       # eval-mode BatchNorm: x * scale + shift
    weight = model.get_classifier().weight * scale[None]
    return weight[None].expand(activations.shape[0], -1, -1)


_HEADS = {"pool_mix_linear": _pool_mix_linear, "pool_linear": _pool_linear, "norm_pool_linear": _norm_pool_linear}


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """grad-cam's per-map scaling: ``(x - min) / (1e-7 + max(x - min))`` over the last two axes."""
    shifted = maps - maps.amin(dim=(2, 3), keepdim=True)
    return shifted / (GRADCAM_EPSILON + shifted.amax(dim=(2, 3), keepdim=True))


class BrowserNetwork(nn.Module):
    """``crop [N, 1, s, s] uint8`` -> probabilities, optionally heatmaps of every class and the OOD score.

    Args:
        model: the network (logits out), in eval mode for the export.
        model_name: its registry name (CAM layer and head kind).
        mean, std: the checkpoint's normalisation.
        heatmaps: compute Grad-CAM heatmaps (the registry entry's ``cam_head`` must be supported).
        ood: OOD statistics (:mod:`common.inference.ood`), or None for no OOD output.
        img_size: the input side (the OOD input-layout part pools the crop with it).
    """

    def __init__(self, model: nn.Module, model_name: str, mean: Sequence[float], std: Sequence[float],
                 heatmaps: bool, ood: Optional[dict] = None, img_size: int = 0):
        super().__init__()
        info = model_info(model_name)
        if heatmaps and info.cam_head not in _HEADS:
            raise UserError(f"{info.display_name} has no in-graph Grad-CAM (its head after the CAM layer is not one "
                            f"of {', '.join(_HEADS)})")
        self.network = model
        self.head_gradient = _HEADS[info.cam_head] if heatmaps else None
        self.cam_layer = info.cam_layer(model)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        # The same module predict.py scores with (PyTorch path and its ONNX export): one formula everywhere.
        self.ood_score = ood_score_module(ood, img_size) if ood is not None else None

    @contextmanager
    def _capture(self):
        """Record the CAM layer's output during the forward pass (what grad-cam's hook reads)."""
        store = {}
        handle = self.cam_layer.register_forward_hook(lambda module, inputs, output: store.__setitem__("a", output))
        try:
            yield store
        finally:
            handle.remove()

    def forward(self, crop: torch.Tensor):
        # common.data.transforms: to_tensor (x / 255 in float32), the grey channel three times, Normalize.
        grey = crop.to(torch.float32) / 255.0
        image = (grey.expand(-1, 3, -1, -1) - self.mean) / self.std
        with self._capture() as store:
            features = self.network.forward_features(image)
        outputs = [torch.sigmoid(self.network.forward_head(features))]
        if self.head_gradient is not None:
            activations = store["a"]
            height, width = activations.shape[2], activations.shape[3]
            weights = self.head_gradient(self.network, activations) / (height * width)   # [N, C, K]
            cams = torch.matmul(weights, activations.flatten(2)).view(activations.shape[0], -1, height, width)
            cams = _min_max(torch.relu(cams))
            cams = F.interpolate(cams, size=(image.shape[2], image.shape[3]), mode="bilinear", align_corners=False)
            outputs.append(torch.clamp(_min_max(cams), 0.0, 1.0))
        if self.ood_score is not None:
            outputs.append(self.ood_score(image, self.network.forward_head(features, pre_logits=True)))
        return tuple(outputs)


def export_browser_onnx(model: nn.Module, model_name: str, img_size: int, path: str | os.PathLike, *,
                        mean: Sequence[float], std: Sequence[float], class_names: Sequence[str],
                        ood: Optional[dict] = None, source: str = "checkpoint") -> dict:
    """Write the browser graph of ``model`` to ``path`` and return its metadata (also stored in the file under
    ``dtforcxr8``): model name, sizes, normalisation, class names, output names, whether heatmaps and the OOD score
    are present, and ``ood_threshold`` / ``ood_percentile`` when they are.

    Args:
        model: the network (its training mode is restored afterwards).
        model_name: registry name.
        img_size: the checkpoint's input side ``s``.
        path: the ``.onnx`` file to write.
        mean, std, class_names: from the checkpoint.
        ood: the OOD statistics (``common.evaluation.ood.load_ood_statistics``) or None.
        source: how messages name the checkpoint.
    """
    heatmaps = heatmap_supported(model_name)
    if ood is not None:
        check_ood_statistics(ood, source)
    device = next(model.parameters()).device
    wrapper = BrowserNetwork(model, model_name, mean, std, heatmaps, ood, img_size).to(device)
    outputs = [PROBABILITIES_OUTPUT] + ([HEATMAPS_OUTPUT] if heatmaps else []) + ([OOD_OUTPUT] if ood else [])
    info = {"model_name": model_name, "img_size": int(img_size), "resize": int(round(img_size * 256 / 224)),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "class_names": list(class_names),
            "input": CROP_INPUT, "input_kind": "uint8 grey evaluation crop [N, 1, s, s]", "outputs": outputs,
            "heatmaps": heatmaps, "heatmap_method": f"Grad-CAM at {model_info(model_name).display_name}'s CAM layer, "
                                                    "weights in the graph" if heatmaps else None,
            "ood": ood is not None}
    if ood is not None:
        info.update({"ood_threshold": float(ood["threshold"]), "ood_percentile": float(ood["percentile"]),
                     "ood_parts": list(ood["parts"])})
    example = torch.zeros(2, 1, img_size, img_size, dtype=torch.uint8, device=device)
    export_traced(wrapper, (example,), Path(path), [CROP_INPUT], outputs, info, restore=model)
    return info
