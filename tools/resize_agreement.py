"""How far an in-graph resize would be from Pillow's: ONNX ``Resize`` (linear, ``antialias=1``, opset 18, run by
onnxruntime) against ``Image.resize(..., BILINEAR)`` on the real PNGs of tests/data/images, at the evaluation
resize of 64- and 224-px models. The reason the browser page resizes with its own port of Pillow's integer
algorithm instead (docs/guide/browser.md, "Preprocessing").

    python tools/resize_agreement.py [--onnx MODEL.onnx]

Prints, per image and size, the largest grey-level difference and the share of pixels that differ, with
``exclude_outside`` 0 (the ONNX default: the filter reads clamped pixels past the border) and 1 (Pillow's rule:
weights past the border dropped and the rest renormalised). With ``--onnx`` (a ``predict.py --export-onnx`` file of
the matching size) also the largest probability change the ONNX crop causes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.images import load_png
from common.inference.onnx import OnnxPredictor, evaluation_crop

REAL = sorted((Path(__file__).resolve().parents[1] / "tests" / "data" / "images").glob("*.png"))


def onnx_resizer(exclude_outside: int):
    """An onnxruntime session ``x [1, 1, H, W] float, sizes [4] -> y``: Resize, linear, antialiased."""
    import onnxruntime
    from onnx import TensorProto, helper

    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", antialias=1,
                            exclude_outside=exclude_outside, coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "resize",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None, None]),
                               helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    def resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
        feeds = {"x": np.asarray(image, np.float32)[None, None], "sizes": np.array([1, 1, size[1], size[0]], np.int64)}
        return np.clip(np.rint(session.run(None, feeds)[0][0, 0]), 0, 255).astype(np.uint8)

    return resize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", default=None, help="a predict.py --export-onnx file: also report probabilities")
    args = parser.parse_args()
    predictor = OnnxPredictor(args.onnx) if args.onnx else None
    for exclude_outside in (0, 1):
        resize = onnx_resizer(exclude_outside)
        worst_grey, worst_probability, shares = 0, 0.0, []
        for path in REAL:
            image = load_png(path)
            for side in (64, 224):
                target = int(round(side * 256 / 224))
                width, height = image.size
                long = int(target * max(width, height) / min(width, height))
                size = (target, long) if width <= height else (long, target)
                ours, pillow = resize(image, size), np.asarray(image.resize(size, Image.BILINEAR))
                difference = np.abs(ours.astype(int) - pillow)
                worst_grey = max(worst_grey, int(difference.max()))
                shares.append(float((difference > 0).mean()))
                if predictor is not None and side == predictor.img_size:
                    left = int(round((size[0] - side) / 2.0))
                    top = int(round((size[1] - side) / 2.0))
                    crop = ours[top:top + side, left:left + side].astype(np.float32) / np.float32(255.0)
                    batch = ((crop[None] - predictor.mean[:, None, None]) / predictor.std[:, None, None])[None]
                    reference = predictor.predict_array(
                        ((evaluation_crop(image, side, target).astype(np.float32) / np.float32(255.0))[None]
                         - predictor.mean[:, None, None])[None] / predictor.std[None, :, None, None])
                    worst_probability = max(worst_probability,
                                            float(np.abs(predictor.predict_array(batch) - reference).max()))
        line = (f"exclude_outside={exclude_outside}: largest difference {worst_grey} grey level(s); pixels that "
                f"differ: {min(shares):.1%} to {max(shares):.1%} per image and size")
        if predictor is not None:
            line += f"; largest probability change {worst_probability:.3g}"
        print(line)


if __name__ == "__main__":
    main()
