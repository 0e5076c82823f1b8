"""Exporters (ONNX, TFLite), ONNX quantization, parity checks and bundles."""
