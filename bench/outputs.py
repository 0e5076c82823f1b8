"""What each model output is: its task, whether it already holds probabilities, how it decides.

Every later stage (fidelity and gates, distillation and fine-tuning losses, pruning's protected
layers, the report) works per output from :func:`resolve_outputs`, so the second and third heads
of a model are scored, trained and kept like the first. Declared specs (``model.outputs`` in
the recipe) win; anything undeclared is inferred from the task and the reference outputs.

This module needs numpy only (it reads declared specs by attribute, not by type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Decision = Literal["argmax", "threshold", "detections"] | None


@dataclass(frozen=True)
class ResolvedOutput:
    """One model output, as every stage treats it.

    Attributes:
        index: Position among the model's outputs.
        name: Declared name, or the model's own output name, or ``output_<index>``.
        task: classification, regression, detection or embedding.
        probabilities: The values are probabilities already (softmax rows, or a sigmoid score
            for a one-value output): losses and decisions must not apply softmax again.
        weight: Weight of this output's loss in distillation and fine-tuning.
        detection: The detection layout (attributes of ``DetectionSpec``) for a detection output.
        decision: How the output decides: ``argmax`` over classes, ``threshold`` of a one-value
            score (0.5 for a probability, 0 for a logit), ``detections`` above a score threshold,
            or None (regression and embeddings have no discrete decision).
    """

    index: int
    name: str
    task: str
    probabilities: bool
    weight: float = 1.0
    detection: Any = None
    decision: Decision = None

    @property
    def threshold(self) -> float:
        """The decision threshold of a one-value output."""
        return 0.5 if self.probabilities else 0.0


def looks_like_probabilities(a: np.ndarray) -> bool:
    """Whether every row of a ``[N, C]`` array (C >= 2) is a probability vector.

    A one-value output counts as a probability when every value lies in [0, 1] and the values
    are not all 0/1 integers cast to float (those are labels, not scores).
    """
    if a.size == 0 or not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
        return False
    flat = a.reshape(len(a), -1).astype(np.float64)
    if flat.min() < -1e-6 or flat.max() > 1 + 1e-6:
        return False
    if flat.shape[1] == 1:
        return not np.all(np.isin(flat, (0.0, 1.0)))
    return bool(np.allclose(flat.sum(axis=1), 1.0, atol=1e-3))


def _infer_task(a: np.ndarray, index: int, task_kind: str) -> str:
    """The task of an undeclared output from the recipe's task and the output's shape."""
    per_sample = a.shape[1:] if a.ndim >= 1 else ()
    if task_kind == "detection":
        return "detection" if len(per_sample) == 2 else "regression"
    if task_kind == "classification":
        if index == 0:
            return "classification"
        # a further head: class scores if it is [N, C] with C >= 2 or a one-value score in [0, 1]
        if len(per_sample) == 1 and (per_sample[0] >= 2 or looks_like_probabilities(a)):
            return "classification"
        return "regression"
    if task_kind == "embedding":
        return "embedding" if index == 0 else "regression"
    return "regression"


def _decision(task: str, a: np.ndarray) -> Decision:
    if task == "detection":
        return "detections"
    if task == "classification":
        values = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        return "threshold" if values == 1 else "argmax"
    return None


def resolve_outputs(
    reference_outputs: list[np.ndarray],
    declared: list[Any] | None,
    task_kind: str,
    task_detection: Any = None,
    names: list[str] | None = None,
) -> list[ResolvedOutput]:
    """Resolve what each output is.

    Args:
        reference_outputs: The reference model's outputs on the eval inputs (one array per output).
        declared: ``model.outputs`` of the recipe (by position) or None.
        task_kind: ``task.kind`` of the recipe: the primary output's task and the default of the rest.
        task_detection: ``task.detection`` (layout of a detection output) or None.
        names: The model's own output names, when it has them (ONNX).

    Returns:
        One entry per output the model has.

    Raises:
        ValueError: When more outputs are declared than the model has, or a declared detection
            output is not ``[N, channels, anchors]``.
    """
    declared = list(declared or [])
    if len(declared) > len(reference_outputs):
        raise ValueError(f"model.outputs lists {len(declared)} outputs, the model has {len(reference_outputs)}")
    resolved = []
    for i, a in enumerate(reference_outputs):
        spec = declared[i] if i < len(declared) else None
        name = getattr(spec, "name", None) or (names[i] if names and i < len(names) else f"output_{i}")
        task = getattr(spec, "task", None) or _infer_task(a, i, task_kind)
        detection = getattr(spec, "detection", None) or (task_detection if task == "detection" else None)
        if task == "detection" and a.ndim != 3:
            raise ValueError(f"output {name!r} is declared detection but has shape {tuple(a.shape)} "
                             "(expected [N, 4 + classes, anchors] or [N, anchors, 4 + classes])")
        prob = getattr(spec, "probabilities", "auto")
        probabilities = looks_like_probabilities(a) if prob == "auto" and task == "classification" else prob is True
        resolved.append(ResolvedOutput(
            index=i, name=name, task=task, probabilities=bool(probabilities),
            weight=float(getattr(spec, "weight", 1.0)), detection=detection, decision=_decision(task, a),
        ))
    return resolved


def decisions(a: np.ndarray, out: ResolvedOutput) -> np.ndarray | None:
    """The discrete decision per sample of an argmax or threshold output (None otherwise)."""
    if out.decision == "argmax":
        return a.reshape(len(a), -1).argmax(axis=1)
    if out.decision == "threshold":
        return (a.reshape(len(a), -1)[:, 0] > out.threshold).astype(np.int64)
    return None
