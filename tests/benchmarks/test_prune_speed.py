"""Speed claim: structured pruning at ratio 0.5 makes the MobileNetV2-style model >= 2x faster.

The trained reference model (digits at 64x64) is pruned with torch-pruning's dependency
graph (magnitude importance, uniform 0.5, widths rounded to 8, classifier kept), fine-tuned
for five epochs, and exported to ONNX beside the unpruned model. Both run in onnxruntime on
one thread, batch 1, through the run's own schedule (``tests/benchmarks/harness.py``): five
fresh processes each, interleaved, merged; the ratio of the pooled medians is the claim, with
its paired hierarchical-bootstrap CI. The accuracy drop on the eval split is printed with it.

Run: ``python -m pytest tests/benchmarks/test_prune_speed.py --benchmark-only -s``
(about 2-3 minutes on 2 cores, most of it fine-tuning).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks.harness import describe, interleaved, p50, speedup
from tests.conftest import ROOT

MODELS = ROOT / "recipes" / "models"
RUNS = 300
REPEATS = 5
MIN_SPEEDUP = 2.0
FINE_TUNE_EPOCHS = 5


def _accuracy(module: Any, split: Any) -> float:
    from compress.intake.models import torch_predict

    return float((torch_predict(module, split.x)[0].argmax(1) == split.y).mean())


@pytest.mark.slow
def test_pruned_mobilenet_is_twice_as_fast(benchmark: Any, tmp_path: Path) -> None:
    import torch

    from compress.intake.data import import_ref, load_dataset
    from compress.steps.distill import supervised_loss
    from compress.intake.models import count_macs
    from compress.steps.pruning import structured_prune
    from compress.intake.recipe import DataSpec, InputSpec, TrainConfig
    from compress.steps.training import fit
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
    x = data.eval.x[0][:1]

    results = benchmark.pedantic(interleaved, args=({"dense": paths[0], "pruned": paths[1]}, [x], REPEATS, RUNS),
                                 rounds=1, iterations=1)
    dense_ms, pruned_ms = p50(results, "dense"), p50(results, "pruned")
    ratio, lo, hi = speedup(results, "pruned", "dense")
    acc_dense, acc_pruned = _accuracy(dense, data.eval), _accuracy(pruned, data.eval)
    macs = count_macs(dense, specs), count_macs(pruned, specs)
    print(f"\nMobileNetV2-style 64x64, onnxruntime 1 thread, batch 1, {REPEATS} interleaved fresh processes x {RUNS} runs:"
          f"\n{describe(results)}"
          f"\n  dense  {macs[0] / 1e6:.1f} M MACs, accuracy {acc_dense:.4f}"
          f"\n  pruned {macs[1] / 1e6:.1f} M MACs, accuracy {acc_pruned:.4f} ({acc_pruned_raw:.4f} before fine-tuning)"
          f"\n  speedup {ratio:.2f}x [95% CI {lo:.2f}, {hi:.2f}], accuracy drop {100 * (acc_dense - acc_pruned):.2f} points")
    benchmark.extra_info.update({"dense_ms": dense_ms, "pruned_ms": pruned_ms, "speedup": ratio, "speedup_ci": [lo, hi],
                                 "accuracy_dense": acc_dense, "accuracy_pruned": acc_pruned})
    assert ratio >= MIN_SPEEDUP
    # fine-tuning must bring the pruned model back to a useful accuracy
    assert acc_pruned >= acc_dense - 0.05
