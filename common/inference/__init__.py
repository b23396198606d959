"""Prediction on a user's own images, torch-free at import (docs/guide/predictions.md): reading PNG, JPEG and DICOM
files and streaming them through a model (``predictor``), the one per-image predictions layout, written and read
(``prediction_files``), the model's metadata dict (``metadata``), and the ONNX export and onnxruntime predictor
(``onnx``).
"""
