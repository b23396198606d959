"""ONNX export of the project's networks and an on-device predictor that needs only numpy, Pillow and onnxruntime.

- :func:`export_onnx`: eval mode, sigmoid included (the graph outputs probabilities), dynamic batch axis, traced
  with a batch of 2 (a batch of 1 can be specialised into the graph), TorchScript exporter (``dynamo=False``) where
  this PyTorch has the switch, then ``onnx.checker``. The evaluation preprocessing (image size, resize, mean, std)
  and the class names are stored in the model's ``metadata_props``. With OOD statistics the graph has a second output,
  ``ood_score [N]`` (:mod:`common.inference.ood`), and the metadata its ``ood_threshold``.
- :func:`export_traced`: the tracing, metadata, check and atomic write under it, for other graphs too (the browser
  export's, :mod:`common.explain.browser_graph`).
- :func:`check_onnx`: the largest absolute difference between onnxruntime's and PyTorch's probabilities.
- :class:`OnnxPredictor`: reads an exported file, applies the same evaluation view as ``common.data.transforms.build_transform``
  (resize the shorter side to ``round(s*256/224)`` with PIL bilinear, centre crop ``s``, scale to [0, 1],
  normalise) and returns probabilities. Importing this module and using the predictor does not import torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Opset 17 is supported by every onnxruntime >= 1.14 and by the TorchScript exporter of torch 2.1 and later.
OPSET = 17
METADATA_KEY = "dtforcxr8"


def _resize_short_side(img_size: int) -> int:
    # Same rule as common.data.images.eval_resize; repeated here so this module does not import torch.
    return int(round(img_size * 256 / 224))


def export_onnx(model, img_size: int, path: str | os.PathLike, *, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, model_name: str = "", class_names: Sequence[str] = CLASS_NAMES,
                opset: int = OPSET, ood: dict | None = None) -> Path:
    """Export ``model`` (logits out) as an ONNX graph ``image [N, 3, s, s] -> probabilities [N, C]``.

    Args:
        model: a network of this project; it is exported in eval mode and its previous mode restored.
        img_size: the input side ``s`` (the checkpoint's ``img_size``).
        path: the ``.onnx`` file to write (the folder is created).
        mean, std: the checkpoint's normalisation, stored in the metadata for :class:`OnnxPredictor`.
        model_name: registry name, stored in the metadata.
        class_names: output order, stored in the metadata.
        opset: ONNX opset.
        ood: the checkpoint's OOD statistics (:mod:`common.inference.ood`), or None. When given, the graph has a
            second output ``ood_score [N]`` (computed in the graph from the input and the pre-logits features) and
            the metadata gains ``ood_threshold``, ``ood_percentile`` and ``ood_parts``.

    Returns:
        the path written. ``onnx.checker`` has validated it.
    """
    import torch

    class WithSigmoid(torch.nn.Module):
        """The network followed by the sigmoid, so on-device code gets probabilities without post-processing."""

        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, image):
            return torch.sigmoid(self.network(image))

    class WithSigmoidAndOod(torch.nn.Module):
        """Probabilities and the OOD score, from one pass through the network's features."""

        def __init__(self, network, score):
            super().__init__()
            self.network, self.score = network, score

        def forward(self, image):
            features = self.network.forward_features(image)
            probabilities = torch.sigmoid(self.network.forward_head(features))
            return probabilities, self.score(image, self.network.forward_head(features, pre_logits=True))

    device = next(model.parameters()).device
    outputs, wrapped = [OUTPUT_NAME], WithSigmoid(model)
    info = {"model_name": model_name, "img_size": int(img_size), "resize": _resize_short_side(img_size),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "class_names": list(class_names), "output": "sigmoid probabilities"}
    if ood is not None:
        from common.inference.ood import OOD_OUTPUT_NAME, check_ood_statistics, ood_score_module
        check_ood_statistics(ood)
        outputs = [OUTPUT_NAME, OOD_OUTPUT_NAME]
        wrapped = WithSigmoidAndOod(model, ood_score_module(ood, img_size).to(device))
        info.update({"outputs": outputs, "ood_threshold": float(ood["threshold"]),
                     "ood_percentile": float(ood["percentile"]), "ood_parts": list(ood["parts"])})
    return export_traced(wrapped, (torch.zeros(2, 3, img_size, img_size, device=device),), path, [INPUT_NAME],
                         outputs, info, opset=opset, restore=model)


def export_traced(module, example: tuple, path: str | os.PathLike, input_names: Sequence[str],
                  output_names: Sequence[str], info: dict, *, opset: int = OPSET, restore=None) -> Path:
    """Trace ``module`` (eval mode, no gradients) into an ONNX file with a dynamic first axis on every input and
    output, store ``info`` as JSON under the :data:`METADATA_KEY` metadata entry, check it with ``onnx.checker`` and
    write it atomically.

    Args:
        module: the network to trace; its mode (and that of ``restore``, when given) is restored afterwards.
        example: example inputs (a batch of 2: a batch of 1 can be specialised into the graph).
        path: the ``.onnx`` file to write (the folder is created).
        input_names, output_names: graph input and output names, in the module's order.
        info: the JSON-serialisable metadata.
        opset: ONNX opset.
        restore: another module whose training mode must be given back (the network inside a wrapper).
    """
    import inspect

    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = [(m, m.training) for m in (module, restore) if m is not None]
    module.eval()
    options = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript exporter, as timm's exporter uses: dynamic_axes work with it and torch.export is not needed.
        options["dynamo"] = False
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(module, example, str(temporary), input_names=list(input_names),
                              output_names=list(output_names), opset_version=opset, do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in [*input_names, *output_names]},
                              **options)
        graph = onnx.load(str(temporary))
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(info)
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        for m, mode in modes:   # the wrapper first, then the network inside it
            m.train(mode)
    return path


def check_onnx(path: str | os.PathLike, model, images) -> float:
    """Largest absolute difference between the ONNX file's probabilities and ``sigmoid(model(images))``.

    Args:
        path: an exported file.
        model: the PyTorch network it was exported from (evaluated in eval mode, mode restored).
        images: ``[B, 3, s, s]`` normalised inputs (a torch tensor or numpy array).
    """
    import torch

    batch = torch.as_tensor(np.asarray(images, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = torch.sigmoid(model(batch.to(next(model.parameters()).device))).cpu().numpy()
    finally:
        model.train(was_training)
    got = OnnxPredictor(path).predict_array(batch.numpy())
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())


def evaluation_crop(image: Image.Image, img_size: int, resize: int) -> np.ndarray:
    """The uint8 ``[s, s]`` grey crop of the evaluation view (``common.data.transforms.build_transform``, eval).

    Resize: shorter side to ``resize``, longer side ``int(resize * long / short)`` (torchvision's rule), PIL
    bilinear; centre crop with offsets ``int(round((size - s) / 2))`` (Python's round: halves to even).
    """
    if image.mode != "L":
        raise ValueError(f"expected a grayscale 'L' image, got mode {image.mode!r} (see common.data.images.to_grayscale)")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(resize * long / short)
    size = (resize, resized_long) if width <= height else (resized_long, resize)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    left = int(round((size[0] - img_size) / 2.0))
    top = int(round((size[1] - img_size) / 2.0))
    return np.asarray(image.crop((left, top, left + img_size, top + img_size)), dtype=np.uint8)


class OnnxPredictor:
    """Run an exported model with onnxruntime on the CPU, preprocessing with numpy and Pillow only.

    Attributes:
        path, model_name, img_size, resize, mean, std, class_names: from the file's metadata.
    """

    def __init__(self, path: str | os.PathLike):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX file {self.path} does not exist")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for any unreadable or invalid file.
            raise UserError(f"cannot load ONNX model {self.path}: {str(err).splitlines()[0]}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise UserError(f"{self.path} has no {METADATA_KEY!r} metadata (preprocessing unknown); export it with "
                            "common.inference.onnx.export_onnx or predict.py --export-onnx")
        info = json.loads(raw)
        self.model_name = info["model_name"]
        self.img_size = int(info["img_size"])
        self.resize = int(info["resize"])
        self.mean = np.asarray(info["mean"], dtype=np.float32)
        self.std = np.asarray(info["std"], dtype=np.float32)
        self.class_names = list(info["class_names"])
        # Files exported with OOD statistics have the second output and its threshold; older ones have neither.
        self.ood_threshold = info.get("ood_threshold")
        self.ood_percentile = info.get("ood_percentile")
        self.has_ood = self.ood_threshold is not None and len(self.session.get_outputs()) > 1

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A PIL 'L' image -> normalised float32 ``[3, s, s]``, exactly as ``common.data.transforms.build_transform`` (eval).

        :func:`evaluation_crop`, then ``/ 255`` and ``(x - mean) / std``.
        """
        crop = evaluation_crop(image, self.img_size, self.resize).astype(np.float32) / np.float32(255.0)
        return (crop[None, :, :] - self.mean[:, None, None]) / self.std[:, None, None]

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, C]`` of normalised inputs ``[N, 3, s, s]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def predict(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        """Probabilities ``[N, C]`` of PIL 'L' images (any size)."""
        if not len(images):
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        outputs = [self.predict_array(np.stack([self.preprocess(image) for image in images[start:start + batch_size]]))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(outputs)

    def predict_array_with_ood(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``[N, C]`` and OOD scores ``[N]`` (None for a file exported without OOD statistics)."""
        if not self.has_ood:
            return self.predict_array(batch), None
        from common.inference.ood import OOD_OUTPUT_NAME
        probabilities, scores = self.session.run([OUTPUT_NAME, OOD_OUTPUT_NAME],
                                                 {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return probabilities, scores

    def predict_with_ood(self, images: Sequence[Image.Image], batch_size: int = 16):
        """Probabilities ``[N, C]`` and OOD scores ``[N]`` (None without OOD output) of PIL 'L' images."""
        if not self.has_ood:
            return self.predict(images, batch_size), None
        if not len(images):
            return np.zeros((0, len(self.class_names)), dtype=np.float32), np.zeros(0, dtype=np.float32)
        pairs = [self.predict_array_with_ood(np.stack([self.preprocess(image)
                                                       for image in images[start:start + batch_size]]))
                 for start in range(0, len(images), batch_size)]
        return np.concatenate([p for p, _ in pairs]), np.concatenate([s for _, s in pairs])
