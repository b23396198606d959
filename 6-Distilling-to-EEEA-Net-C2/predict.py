"""Predict the 14 ChestX-ray14 findings on your own PNG, JPEG or DICOM images with a distilled EEEA-Net-C2 student.

The default checkpoint is modeld-ensemble.pth here (the student of the five-teacher ensemble); pass
--checkpoint modeldK.pth for the student of teacher K.

Usage: python predict.py IMAGE_OR_FOLDER ... [--output predictions.csv] [--cam] [--checkpoint FILE]
       python predict.py --export-onnx model.onnx        (then: python predict.py IMAGES --onnx model.onnx)
       python predict.py --export-web page               (then: python -m http.server --directory page)
"""
import sys
from pathlib import Path

from common.commands._cli import run_main
from common.commands.predict import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:], model="eeea_c2", index=6, folder=Path(__file__).resolve().parent))
