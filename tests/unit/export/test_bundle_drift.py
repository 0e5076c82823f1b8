"""The bundle's drift side without a run: no data means no fingerprint, and the model card says why."""

from __future__ import annotations

from types import SimpleNamespace

from export.bundle_drift import KOTLIN_SNIPPET, bundle_fingerprint, model_card_section


def test_a_recipe_without_data_gets_no_fingerprint_and_the_card_says_why() -> None:
    recipe = SimpleNamespace(data=None)
    fp, why = bundle_fingerprint(recipe, None, session=None, layout="NCHW", labels=None)
    assert fp is None and "no data section" in why
    card = "\n".join(model_card_section(None, why))
    assert "## Monitoring input drift on the device" in card and "no data section" in card
    gone = bundle_fingerprint(SimpleNamespace(data=SimpleNamespace(source="data.npz")), None, None, "NCHW", None)
    assert gone[0] is None and "data.npz" in gone[1] and "could not be loaded" in gone[1]


def test_the_card_carries_thresholds_and_the_kotlin_snippet() -> None:
    fp = {"thresholds": {"psi_moderate": 0.1, "psi_drift": 0.25, "ks_alpha": 0.01},
          "reference": {"samples": 10, "data": "builtin:digits"}, "inputs": [{"features": [{}, {}]}]}
    card = "\n".join(model_card_section(fp, None))
    assert "| < 0.1 | 0.1 - 0.25 | > 0.25 |" in card and "alpha 0.01" in card and "2 input features" in card
    assert KOTLIN_SNIPPET.rstrip("\n") in card and "```kotlin" in card
