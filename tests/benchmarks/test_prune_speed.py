"""Speed claim: structured pruning at ratio 0.5 makes the MobileNetV2-style model >= 2x faster.

The trained reference model (digits at 64x64) is pruned with torch-pruning's dependency
graph (magnitude importance, uniform 0.5, widths rounded to 8, classifier kept), fine-tuned
for five epochs, and exported to ONNX beside the unpruned model. Both run in onnxruntime on
one thread, batch 1, interleaved run by run in one process; the ratio of the medians is the
claim. The accuracy drop on the eval split is printed with it.

Run: ``python -m pytest tests/benchmarks/test_prune_speed.py --benchmark-only -s``
(about 2-3 minutes on 2 cores, most of it fine-tuning).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT

MODELS = ROOT / "recipes" / "models"
RUNS = 300
MIN_SPEEDUP = 2.0
FINE_TUNE_EPOCHS = 5


def _interleaved_medians(sessions: list[Any], x: np.ndarray, runs: int) -> list[float]:
    """Median ms of each session, timed alternately so machine noise hits both alike."""
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(20):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def _accuracy(module: Any, split: Any) -> float:
    from compress.models import torch_predict

    return float((torch_predict(module, split.x)[0].argmax(1) == split.y).mean())


@pytest.mark.slow
def test_pruned_mobilenet_is_twice_as_fast(benchmark: Any, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from compress.data import import_ref, load_dataset
    from compress.distill import supervised_loss
    from compress.models import count_macs
    from compress.prune import structured_prune
    from compress.recipe import DataSpec, InputSpec, TrainConfig
    from compress.training import fit
    from export.onnx import export_module_to_onnx

    weights = MODELS / "mobilenet_digits.pt"
    if not weights.is_file():
        pytest.skip("recipes/models/mobilenet_digits.pt missing: run recipes/models/train_mobilenet.py")
    data = load_dataset(DataSpec(source="builtin:digits", eval_fraction=0.2, seed=0, image_size=64))
    dense = import_ref(f"{MODELS}/mobilenet.py:mobilenet_v2")()
    dense.load_state_dict(torch.load(weights, weights_only=True))
    dense.eval()
    pruned = copy.deepcopy(dense)
    structured_prune(pruned, [torch.randn(2, 1, 64, 64)], 0.5, round_to=8)
    acc_pruned_raw = _accuracy(pruned, data.eval)
    fit(pruned, supervised_loss(pruned, "classification"), data.train,
        TrainConfig(epochs=FINE_TUNE_EPOCHS, lr=1e-3, batch_size=32), seed=0, desc="fine-tune")
    specs = [InputSpec(shape=[1, 1, 64, 64])]
    paths = [tmp_path / "dense.onnx", tmp_path / "pruned.onnx"]
    for module, path in zip((dense, pruned), paths):
        export_module_to_onnx(module, specs, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in paths]
    x = data.eval.x[0][:1]

    dense_ms, pruned_ms = benchmark.pedantic(_interleaved_medians, args=(sessions, x, RUNS), rounds=1, iterations=1)
    speedup = dense_ms / pruned_ms
    acc_dense, acc_pruned = _accuracy(dense, data.eval), _accuracy(pruned, data.eval)
    macs = count_macs(dense, specs), count_macs(pruned, specs)
    print(f"\nMobileNetV2-style 64x64, onnxruntime 1 thread, batch 1, median of {RUNS} interleaved runs:"
          f"\n  dense  {dense_ms:.3f} ms, {macs[0] / 1e6:.1f} M MACs, accuracy {acc_dense:.4f}"
          f"\n  pruned {pruned_ms:.3f} ms, {macs[1] / 1e6:.1f} M MACs, accuracy {acc_pruned:.4f} "
          f"({acc_pruned_raw:.4f} before fine-tuning)"
          f"\n  speedup {speedup:.2f}x, accuracy drop {100 * (acc_dense - acc_pruned):.2f} points")
    benchmark.extra_info.update({"dense_ms": dense_ms, "pruned_ms": pruned_ms, "speedup": speedup,
                                 "accuracy_dense": acc_dense, "accuracy_pruned": acc_pruned})
    assert speedup >= MIN_SPEEDUP
    # fine-tuning must bring the pruned model back to a useful accuracy
    assert acc_pruned >= acc_dense - 0.05
