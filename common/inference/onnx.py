"""ONNX export of the project's networks and an on-device predictor that needs only numpy, Pillow and onnxruntime.

- :func:`export_onnx`: eval mode, sigmoid included (the graph outputs probabilities), dynamic batch axis, traced
  with a batch of 2 (a batch of 1 can be specialised into the graph), then ``onnx.checker``. Two exporters: the
  TorchScript one (``dynamo=False``, opset 17, the default) and torch's ``torch.export``-based one (``dynamo=True``,
  opset 18, needs onnxscript); why the default is still the first: docs/guide/predictions.md §6. The model's metadata
  dict (:mod:`common.inference.metadata`: preprocessing, class names, validation thresholds, and whatever a caller
  adds) is stored as JSON in the file's ``metadata_props`` under :data:`METADATA_KEY`.
  With OOD statistics the graph has a second output, ``ood_score [N]`` (:mod:`common.inference.ood`),
  and the metadata its ``ood_threshold``.
- :func:`export_traced`: the tracing, metadata, check and atomic write for other graphs (the browser export's,
  :mod:`common.explain.browser_graph`).
- :func:`check_onnx`: the largest absolute difference between onnxruntime's and PyTorch's probabilities.
- :class:`OnnxPredictor`: reads an exported file, checks its metadata against the graph, applies the evaluation view
  (:func:`common.data.images.eval_view`, equal to ``common.data.transforms.build_transform``'s) and returns
  probabilities. Importing this module and using the predictor does not import torch.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.images import eval_view
from common.errors import UserError
from common.inference.metadata import METADATA_KEY, check_metadata, model_metadata

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Opset 17 is supported by every onnxruntime >= 1.14 and by the TorchScript exporter of torch 2.1 and later.
OPSET = 17
# The dynamo exporter has no implementations below opset 18 (asked for 17, it converts and fails on Squeeze/Unsqueeze).
DYNAMO_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OPSET", "EXPORTERS", "METADATA_KEY", "export_onnx", "check_onnx",
           "OnnxPredictor"]


def export_onnx(model, img_size: int, path: str | os.PathLike, *, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, model_name: str = "", class_names: Sequence[str] = CLASS_NAMES,
                opset: int = OPSET, metadata: dict | None = None, exporter: str = "torchscript",
                ood: dict | None = None) -> Path:
    """Export ``model`` (logits out) as an ONNX graph ``image [N, 3, s, s] -> probabilities [N, C]``.

    Args:
        model: a network of this project; it is exported in eval mode and its previous mode restored.
        img_size: the input side ``s`` (the checkpoint's ``img_size``).
        path: the ``.onnx`` file to write (the folder is created; written atomically).
        mean, std, model_name, class_names: used to build the metadata when ``metadata`` is not given.
        opset: ONNX opset (the dynamo exporter: at least :data:`DYNAMO_OPSET`).
        metadata: the model's metadata dict (:func:`common.inference.metadata.checkpoint_metadata`), stored after
            checking, with ``exporter`` and ``opset`` added; its ``img_size`` must equal ``img_size``.
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``) or ``"dynamo"`` (``dynamo=True``; needs
            the onnxscript package; its onnxscript optimiser runs). Both agree with PyTorch to 2e-6 on the five
            networks (docs/guide/predictions.md §6).
        ood: the checkpoint's OOD statistics (:mod:`common.inference.ood`), or None. When given, the graph has a
            second output ``ood_score [N]`` (computed in the graph from the input and the pre-logits features) and
            the metadata gains ``ood_threshold``, ``ood_percentile`` and ``ood_parts``.

    Returns:
        the path written. ``onnx.checker`` has validated it.
    """
    import inspect

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

    if exporter not in EXPORTERS:
        raise UserError(f"ONNX exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    info = metadata if metadata is not None else model_metadata(model_name, img_size, mean, std, class_names)
    info = check_metadata(dict(info), "the metadata to export")
    if info["img_size"] != int(img_size):
        raise ValueError(f"metadata img_size {info['img_size']} differs from the exported img_size {img_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(2, 3, img_size, img_size, device=device)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter's dependency; torch does not install it)
        except ImportError:
            raise UserError("the dynamo ONNX exporter needs the onnxscript package: pip install onnxscript") from None
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            raise UserError(f"the dynamo ONNX exporter needs torch >= 2.5 (this is {torch.__version__})")
        opset = max(opset, DYNAMO_OPSET)
        options = {"dynamo": True, "optimize": True, "dynamic_shapes": {INPUT_NAME: {0: torch.export.Dim("batch")}}}
    else:
        options = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            # torch >= 2.5 defaults to the dynamo exporter; this one needs no torch.export and no onnxscript.
            options["dynamo"] = False
    info = {**info, "exporter": exporter, "opset": int(opset)}
    temporary = path.with_name(f".{path.name}.tmp")
    outputs, wrapped = [OUTPUT_NAME], WithSigmoid(model)
    if ood is not None:
        from common.inference.ood import OOD_OUTPUT_NAME, check_ood_statistics, ood_score_module
        check_ood_statistics(ood)
        outputs = [OUTPUT_NAME, OOD_OUTPUT_NAME]
        wrapped = WithSigmoidAndOod(model, ood_score_module(ood, img_size).to(device))
        if "dynamic_axes" in options:
            options["dynamic_axes"][OOD_OUTPUT_NAME] = {0: "batch"}
    try:
        # The dynamo exporter prints its progress ("[torch.onnx] Obtain model graph ...") to stdout.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(wrapped, (example,), str(temporary), input_names=[INPUT_NAME], output_names=outputs,
                              opset_version=opset, do_constant_folding=True, **options)
        if ood is not None:
            info.update({"outputs": outputs, "ood_threshold": float(ood["threshold"]),
                         "ood_percentile": float(ood["percentile"]), "ood_parts": list(ood["parts"])})
        _check_and_publish(temporary, path, info)
    finally:
        temporary.unlink(missing_ok=True)
        model.train(was_training)
    return path


def _check_and_publish(temporary: Path, path: Path, info: dict) -> None:
    """Store ``info`` in the exported ``temporary`` graph's metadata, check the graph with ``onnx.checker`` and move
    it over ``path`` (a file is complete or absent: the caller removes ``temporary`` on failure)."""
    import onnx

    graph = onnx.load(str(temporary))
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(temporary))
    os.replace(temporary, path)


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
        _check_and_publish(temporary, path, info)
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


def _static(dim) -> int | None:
    """A graph dimension's fixed size, or None for a symbolic one ("batch")."""
    return dim if isinstance(dim, int) else None


class OnnxPredictor:
    """Run an exported model with onnxruntime on the CPU, preprocessing with numpy and Pillow only.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: onnxruntime's own choice, one per core).

    Attributes:
        metadata: the file's metadata dict (:mod:`common.inference.metadata`), checked against the graph.
        path, model_name, img_size, resize, mean, std, class_names: from the metadata.
        val_thresholds: ``[C]`` float64 validation thresholds, or None when the file has none.
        threads: the intra-op thread count asked for (None: onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX file {self.path} does not exist")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), sess_options=options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for any unreadable or invalid file.
            raise UserError(f"cannot load ONNX model {self.path}: {str(err).splitlines()[0]}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise UserError(f"{self.path} has no {METADATA_KEY!r} metadata (preprocessing unknown); export it with "
                            "common.inference.onnx.export_onnx or predict.py --export-onnx")
        try:
            info = json.loads(raw)
        except json.JSONDecodeError as err:
            raise UserError(f"{self.path}: the {METADATA_KEY!r} metadata is not JSON ({err.msg} at character "
                            f"{err.pos})") from None
        self.metadata = check_metadata(info, f"the {METADATA_KEY!r} metadata of {self.path}")
        self._check_graph()
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
        thresholds = info.get("val_thresholds")
        self.val_thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)

    def _check_graph(self) -> None:
        """The metadata must describe this graph: input ``image [N, 3, s, s]``, output ``probabilities [N, C]``."""
        info = self.metadata
        inputs = {node.name: node.shape for node in self.session.get_inputs()}
        outputs = {node.name: node.shape for node in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise UserError(f"{self.path} is not a graph {INPUT_NAME} -> {OUTPUT_NAME} (inputs: "
                            f"{', '.join(inputs)}; outputs: {', '.join(outputs)}); export it with predict.py "
                            "--export-onnx")
        shape = inputs[INPUT_NAME]
        expected = (None, 3, info["img_size"], info["img_size"])
        if len(shape) != 4 or any(_static(got) not in (None, want) for got, want in zip(shape[1:], expected[1:])):
            raise UserError(f"{self.path}: the metadata says input [N, 3, {info['img_size']}, {info['img_size']}], "
                            f"the graph takes {shape}")
        shape = outputs[OUTPUT_NAME]
        classes = len(info["class_names"])
        if len(shape) != 2 or _static(shape[1]) not in (None, classes):
            raise UserError(f"{self.path}: the metadata names {classes} classes, the graph outputs {shape}")

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A PIL 'L' image -> normalised float32 ``[3, s, s]`` (:func:`common.data.images.eval_view`)."""
        return eval_view(image, self.img_size, self.mean, self.std, resize=self.resize)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph, by name, for normalised inputs ``[N, 3, s, s]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        names = [node.name for node in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {INPUT_NAME: batch})))

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, C]`` of normalised inputs ``[N, 3, s, s]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def predict(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        """Probabilities ``[N, C]`` of PIL 'L' images (any size), already decoded; files stream through
        :func:`common.inference.predictor.predict_images` instead."""
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
