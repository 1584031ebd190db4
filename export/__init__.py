"""Exporters to Core ML, ONNX and TFLite, runners for each runtime, validation and publishing."""
