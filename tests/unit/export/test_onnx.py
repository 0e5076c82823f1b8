"""The torch -> ONNX export."""

from __future__ import annotations


def test_onnx_export_carries_no_source_paths(tmp_path) -> None:  # noqa: ANN001
    """The dynamo exporter's per-node stack traces (the user's file paths and code) are not shipped."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from torch import nn

    from compress.intake.recipe import InputSpec
    from export.onnx import export_module_to_onnx

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    dest = tmp_path / "m.onnx"
    export_module_to_onnx(module, [InputSpec(name="x", shape=[1, 1, 8, 8])], dest)
    model = onnx.load(str(dest))
    assert not any(n.metadata_props for n in model.graph.node)
    assert __file__.encode() not in dest.read_bytes() and b"stack_trace" not in dest.read_bytes()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    out = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(out - module(torch.from_numpy(x)).detach().numpy()).max() < 1e-5
