"""edgepack: compress a trained PyTorch model, export it to ONNX and TFLite, measure it on devices.

Importing this package is cheap: torch, onnxruntime and TensorFlow-side packages are
imported only inside the steps that need them.
"""

__version__ = "0.1.0"
