"""Predict the 14 ChestX-ray14 findings on your own PNG, JPEG or DICOM images with Visformer-small (model4.pth here, or --checkpoint).

Usage: python predict.py IMAGE_OR_FOLDER ... [--output predictions.csv] [--cam] [--checkpoint FILE]
       python predict.py --export-onnx model.onnx        (then: python predict.py IMAGES --onnx model.onnx)
       python predict.py --export-web page               (then: python -m http.server --directory page)
"""
import sys
from pathlib import Path

from common.commands._cli import run_main
from common.commands.predict import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:], model="visformer_small", index=4, folder=Path(__file__).resolve().parent))
