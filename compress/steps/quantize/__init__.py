"""The quantize step: ONNX post-training quantization (onnxruntime, or Intel Neural Compressor), its tuning."""
