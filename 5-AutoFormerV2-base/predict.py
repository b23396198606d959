"""Predict the 14 ChestX-ray14 findings on your own PNG, JPEG or DICOM images with AutoFormerV2-base (model5.pth here, or --checkpoint).

Usage: python predict.py IMAGE_OR_FOLDER ... [--output predictions.csv] [--cam] [--checkpoint FILE]
       python predict.py --export-onnx model.onnx        (then: python predict.py IMAGES --onnx model.onnx)
       python predict.py --export-web page               (then: python -m http.server --directory page)
"""
from pathlib import Path

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.predict", model="autoformerv2_base", index=5, folder=Path(__file__).resolve().parent)
