"""Prediction on a user's own images, torch-free at import: reading PNG, JPEG and DICOM files and writing the
predictions CSV (``predictor``), and the ONNX export and onnxruntime predictor (``onnx``).
"""
