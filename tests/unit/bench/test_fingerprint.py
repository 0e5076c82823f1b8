"""Input fingerprints: buckets, features (channels, cells, tokens), outputs, and the JSON's size."""

from __future__ import annotations

import json

import numpy as np

from bench.fingerprint import (
    BINS,
    bucket_counts,
    bucket_index,
    float_features,
    grid_of,
    input_fingerprint,
    make_fingerprint,
    max_score,
    output_fingerprint,
    robust_edges,
)


def test_buckets_follow_the_documented_convention() -> None:
    edges = [0.0, 1.0, 2.0]
    values = np.array([-1.0, 0.0, 0.5, 1.0, 1.999, 2.0, 2.5])
    # underflow, [0, 1), [0, 1), [1, 2], [1, 2], [1, 2] (the last inner bin is closed), overflow
    assert bucket_index(values, edges).tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert bucket_counts(values, edges) == [1, 2, 3, 1]


def test_robust_edges_span_the_middle_and_survive_a_constant_feature() -> None:
    v = np.linspace(0.0, 100.0, 1001)
    edges = robust_edges(v)
    assert len(edges) == BINS + 1 and edges[0] == np.quantile(v, 0.005) and edges[-1] == np.quantile(v, 0.995)
    const = robust_edges(np.zeros(50))
    assert const[0] == 0.0 and const[-1] > 0.0 and len(set(const)) == BINS + 1
    # a constant feature: the same value lands inside, anything else outside
    assert bucket_counts(np.zeros(5), const)[0] == 0 and bucket_counts(np.zeros(5), const)[-1] == 0
    assert bucket_counts(np.full(5, 0.01), const)[-1] == 5


def test_small_images_are_fingerprinted_per_pixel_large_ones_on_a_coarse_grid() -> None:
    assert grid_of(1, (8, 8)) == [8, 8]
    assert grid_of(3, (224, 224)) == [4, 4]
    x = np.random.default_rng(0).random((3, 3, 224, 224)).astype(np.float32)
    fp = input_fingerprint("image", x, 0, "NCHW")
    assert fp["grid"] == [4, 4] and len(fp["features"]) == 3 + 3 * 16
    cell = fp["features"][3]
    assert cell["name"] == "cell c0 [0,0]" and cell["region"] == [[0, 56], [0, 56]]
    assert np.isclose(cell["mean"], x[:, 0, :56, :56].reshape(3, -1).mean(axis=1).mean())
    assert len(json.dumps(fp)) < 200_000


def test_nhwc_and_nchw_give_the_same_features() -> None:
    x = np.random.default_rng(1).random((20, 3, 5, 6)).astype(np.float32)
    a, facts_a = float_features(x, "NCHW")
    b, facts_b = float_features(np.transpose(x, (0, 2, 3, 1)), "NHWC")
    assert facts_a == {"channel_axis": 1, "grid": [5, 6]} and facts_b == {"channel_axis": 3, "grid": [5, 6]}
    assert [d for d, _ in a] == [d for d, _ in b]
    assert all(np.array_equal(va, vb) for (_, va), (_, vb) in zip(a, b))


def test_a_table_has_one_feature_per_column() -> None:
    x = np.column_stack([np.arange(100.0), np.ones(100)]).astype(np.float32)
    fp = input_fingerprint("features", x, 0, None)
    assert fp["kind"] == "table" and [f["name"] for f in fp["features"]] == ["feature 0", "feature 1"]
    assert fp["features"][0]["n"] == 100 and fp["features"][0]["quantiles"]["50"] == 49.5
    assert sum(fp["features"][0]["counts"]) == 100


def test_token_inputs_get_a_vocabulary_sketch() -> None:
    x = np.array([[5, 5, 5, 7], [7, 9, 5, 1]], dtype=np.int64)
    fp = input_fingerprint("ids", x, 0, None)
    f = fp["features"][0]
    assert fp["kind"] == "tokens" and f["tokens"][:2] == [5, 7] and f["tokens"][2:] == [1, 9]  # ties: smaller id
    assert f["counts"] == [4, 2, 1, 1, 0] and f["n"] == 8


def test_integer_images_are_pixel_values_not_tokens() -> None:
    x = np.random.default_rng(3).integers(0, 256, size=(10, 3, 4, 4)).astype(np.uint8)
    assert input_fingerprint("raw", x, 0, "NCHW")["kind"] == "image"
    assert input_fingerprint("raw", x.astype(np.int32), 0, "NCHW")["kind"] == "image"
    assert input_fingerprint("ids", x.reshape(10, -1).astype(np.int32), 0, None)["kind"] == "tokens"


def test_fixed_inputs_are_skipped() -> None:
    fp = input_fingerprint("state", np.zeros((2, 1, 4), np.float32), None, None)
    assert fp["kind"] == "skipped"


def test_classification_outputs_record_class_prior_and_confidence() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    fp = output_fingerprint("logits", logits, classification=True, logits=True, labels=["a", "b", "c"])
    assert fp["class_prior"]["counts"] == [2, 2, 0]  # a tie goes to the first class
    expected = 1 / np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)
    assert np.allclose(max_score(logits, True), expected) and np.isclose(expected[3], 1 / (2 + np.exp(-1)))
    assert sum(fp["score"]["counts"]) == 4 and fp["labels"] == ["a", "b", "c"]
    probs = output_fingerprint("p", np.array([[0.2, 0.8], [0.6, 0.4]]), classification=True, logits=False)
    assert probs["score"]["is"] == "max_probability" and probs["score"]["max"] == 0.8
    assert output_fingerprint("emb", np.ones((4, 3)), classification=False, logits=False)["kind"] == "values"


def test_the_document_round_trips_through_json() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((30, 1, 4, 4)).astype(np.float32)
    doc = make_fingerprint([{"name": "x", "batch_axis": 0}], [x], [{"name": "y", "classification": True}],
                           [rng.standard_normal((30, 4))], layout="NCHW", source={"data": "test"})
    assert json.loads(json.dumps(doc)) == doc
    assert doc["format_version"] == 1 and doc["inputs"][0]["samples"] == 30 and doc["outputs"][0]["classes"] == 4
