"""The step cache: keys, store and lookup, corruption, concurrency, eviction, the eval cache."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.runner import stepcache
from compress.runner.cachefiles import parse_age, parse_size
from compress.runner.evalcache import EvalCache
from compress.runner.stepcache import StepCache
from compress.runner.stepkey import ABSENT, StepKey, diff_keys, fingerprint_arrays, hash_path, hash_state_dict
from tests.conftest import ROOT

DAY = 86400.0


@pytest.fixture(autouse=True)
def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEPACK_CACHE", str(root))
    monkeypatch.delenv("EDGEPACK_CACHE_MAX_BYTES", raising=False)
    return root


def _key(**over: Any) -> StepKey:
    fields: dict[str, Any] = dict(
        kind="prune", config={"ratio": 0.5, "method": "l1", "ignore": ["fc"]}, input_hash="a" * 64,
        arch="x86", versions={"edgepack": "0.1.0", "torch": "2.13.0"}, data_fingerprint="d" * 64,
        seed=0, cpu_flags=("avx2", "avx512_vnni"), files={"teacher.pt": "t" * 64},
    )
    fields.update(over)
    return StepKey(**fields)


def _artifact(folder: Path, name: str = "model.onnx", size: int = 1000, fill: int = 7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(bytes([fill]) * size)
    return path


def _set_used(cache: StepCache, key: StepKey, age_s: float) -> None:
    ts = time.time() - age_s
    os.utime(cache.steps_dir / key.digest / "used", (ts, ts))


def _visible(cache: StepCache) -> list[str]:
    return sorted(p.name for p in cache.steps_dir.iterdir() if p.name != ".lock") if cache.steps_dir.exists() else []


# ---------------------------------------------------------------- keys


def test_same_inputs_same_digest_and_order_does_not_matter() -> None:
    a = _key()
    b = _key(config={"ignore": ["fc"], "method": "l1", "ratio": 0.5}, cpu_flags=["avx512_vnni", "avx2", "avx2"],
             versions={"torch": "2.13.0", "edgepack": "0.1.0"})
    assert a.digest == b.digest and a == b and hash(a) == hash(b)
    assert len(a.digest) == 64 and a.describe()["cpu_flags"] == ["avx2", "avx512_vnni"]


@pytest.mark.parametrize("change", [
    {"kind": "distill"},
    {"config": {"ratio": 0.6, "method": "l1", "ignore": ["fc"]}},
    {"config": {"ratio": 0.5, "method": "l1", "ignore": ["fc", "conv"]}},
    {"input_hash": "b" * 64},
    {"data_fingerprint": "e" * 64},
    {"seed": 1},
    {"seed": None},
    {"arch": "arm"},
    {"cpu_flags": ("avx2",)},
    {"versions": {"edgepack": "0.1.0", "torch": "2.14.0"}},
    {"versions": {"edgepack": "0.1.0", "torch": "2.13.0", "onnxruntime": "1.22"}},
    {"files": {"teacher.pt": "u" * 64}},
])
def test_every_field_changes_the_digest(change: dict[str, Any]) -> None:
    assert _key(**change).digest != _key().digest


def test_int_and_float_config_values_are_different_keys() -> None:
    # pydantic emits one type per field, so a change of type is a change of config
    assert _key(config={"ratio": 1}).digest != _key(config={"ratio": 1.0}).digest


def test_referenced_file_contents_are_in_the_key(tmp_path: Path) -> None:
    teacher = _artifact(tmp_path, "teacher.pt", fill=1)
    build = lambda: StepKey.build("distill", {"teacher": "teacher.pt"}, input_hash="x", arch="arm",  # noqa: E731
                                  versions={"edgepack": "0.1.0"}, files=[teacher])
    before = build()
    assert build().digest == before.digest
    teacher.write_bytes(b"other weights")
    after = build()
    assert after.digest != before.digest
    assert list(diff_keys(before, after)) == [f"files.{teacher}"]


def test_directory_hash_covers_names_and_bytes_not_location(tmp_path: Path) -> None:
    for root in (tmp_path / "a", tmp_path / "b"):
        _artifact(root / "sub", "w.bin", fill=3)
        _artifact(root, "cfg.json", fill=4)
    assert hash_path(tmp_path / "a") == hash_path(tmp_path / "b")
    (tmp_path / "b" / "sub" / "w.bin").rename(tmp_path / "b" / "sub" / "w2.bin")
    assert hash_path(tmp_path / "a") != hash_path(tmp_path / "b")
    (tmp_path / "b" / "sub" / "w2.bin").rename(tmp_path / "b" / "sub" / "w.bin")
    (tmp_path / "b" / "cfg.json").write_bytes(b"changed")
    assert hash_path(tmp_path / "a") != hash_path(tmp_path / "b")
    import hashlib
    assert hash_path(tmp_path / "a" / "cfg.json") == hashlib.sha256(bytes([4]) * 1000).hexdigest()


def test_key_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="arch must be one of x86, arm"):
        _key(arch="riscv")
    with pytest.raises(TypeError, match="model_dump"):
        _key(config={"x": object()})
    with pytest.raises(TypeError, match="not one string"):
        _key(cpu_flags="avx2")
    with pytest.raises(TypeError, match="seed"):
        _key(seed="0")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _reordered(value: Any, rnd: st.DataObject) -> Any:
    if isinstance(value, dict):
        keys = rnd.draw(st.permutations(list(value)))
        return {k: _reordered(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [_reordered(v, rnd) for v in value]
    return value


@settings(max_examples=40, deadline=None)
@given(config=st.dictionaries(st.text(max_size=6), json_values, max_size=6), data=st.data())
def test_digest_does_not_depend_on_dict_order(config: dict[str, Any], data: st.DataObject) -> None:
    shuffled = _reordered(config, data)
    assert _key(config=config).digest == _key(config=shuffled).digest
    assert diff_keys(_key(config=config), _key(config=shuffled)) == {}


def test_diff_keys_names_what_differs(tmp_path: Path) -> None:
    a = _key()
    b = _key(config={"ratio": 0.7, "method": "l1", "ignore": ["fc"]}, versions={"edgepack": "0.1.0"}, seed=3)
    d = diff_keys(a, b)
    assert d == {"config.ratio": (0.5, 0.7), "seed": (0, 3), "versions.torch": ("2.13.0", ABSENT)}
    assert diff_keys(a, a) == {}
    # against a stored key.json, as `compress cache` would do it
    cache = StepCache()
    assert cache.store(a, {"m.onnx": _artifact(tmp_path / "run", "m.onnx")}, {})
    stored = json.loads((cache.steps_dir / a.digest / "key.json").read_text())
    assert stored["digest"] == a.digest
    assert diff_keys(stored, b).keys() - {"digest"} == d.keys()


def test_fingerprint_arrays_sees_dtype_shape_and_bytes() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = fingerprint_arrays(x, np.array([1, 2]))
    assert fingerprint_arrays(x.copy(), np.array([1, 2])) == base
    assert fingerprint_arrays(np.asfortranarray(x), np.array([1, 2])) == base  # values, not memory layout
    assert fingerprint_arrays(x.reshape(4, 3), np.array([1, 2])) != base
    assert fingerprint_arrays(x.astype(np.float64), np.array([1, 2])) != base
    y = x.copy()
    y[0, 0] = 99
    assert fingerprint_arrays(y, np.array([1, 2])) != base
    assert fingerprint_arrays(np.array([1, 2]), x) != base
    with pytest.raises(TypeError, match="object arrays"):
        fingerprint_arrays(np.array([{}, None], dtype=object))


def test_hash_state_dict_follows_the_weights() -> None:
    import torch
    from torch import nn

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))

    a, b = make(), make()
    assert hash_state_dict(a) == hash_state_dict(b)
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1e-3
    assert hash_state_dict(a) != hash_state_dict(b)
    c = make()
    c[1].running_mean.fill_(0.5)  # a buffer counts too
    assert hash_state_dict(c) != hash_state_dict(a)
    d = make().to(torch.float16)
    assert hash_state_dict(d) != hash_state_dict(a)

    class Other(nn.Sequential):
        pass

    assert hash_state_dict(Other(*make())) != hash_state_dict(a)  # same weights, other class


def test_hash_state_dict_of_subclasses_extra_state_and_meta() -> None:
    import torch
    from torch import nn

    class Packed(torch.Tensor):  # a stand-in for torchao's quantized weights
        @property
        def qdata(self) -> torch.Tensor:
            return self.as_subclass(torch.Tensor).to(torch.int8)

        def __tensor_flatten__(self) -> tuple[list[str], dict[str, int]]:
            return ["qdata"], {"bits": 4}

    class Holder(nn.Module):
        def __init__(self, values: list[float], extra: Any = None) -> None:
            super().__init__()
            self.register_buffer("w", torch.tensor(values).as_subclass(Packed))
            self.extra = extra

        def get_extra_state(self) -> Any:
            return self.extra

        def set_extra_state(self, state: Any) -> None:
            self.extra = state

    base = hash_state_dict(Holder([1.0, 2.0], {"k": 1}))
    assert hash_state_dict(Holder([1.0, 2.0], {"k": 1})) == base
    assert hash_state_dict(Holder([1.0, 3.0], {"k": 1})) != base
    assert hash_state_dict(Holder([1.0, 2.0], {"k": 2})) != base
    with pytest.raises(TypeError, match=r"'bias' \(meta tensor\); run this step uncached"):
        hash_state_dict(nn.Linear(2, 2).to("meta"))
    with pytest.raises(TypeError, match="extra_state"):
        hash_state_dict(Holder([1.0], lambda: 0))


# ---------------------------------------------------------------- store, lookup, materialise


def _stored(tmp_path: Path, cache: StepCache | None = None, key: StepKey | None = None,
            size: int = 1000) -> tuple[StepCache, StepKey, dict[str, Path]]:
    cache = cache or StepCache()
    key = key or _key()
    files = {"model.onnx": _artifact(tmp_path / "src", "model.onnx", size, 1),
             "sub/model.onnx.data": _artifact(tmp_path / "src" / "sub", "model.onnx.data", size, 2)}
    assert cache.store(key, files, {"record": {"status": "ok"}, "advisories": ["int8 slower"]})
    assert cache.last_store_error is None
    return cache, key, files


def test_round_trip_with_hard_links(tmp_path: Path, _cache_env: Path) -> None:
    cache, key, files = _stored(tmp_path)
    assert cache.root == _cache_env
    entry = cache.steps_dir / key.digest
    assert sorted(p.name for p in entry.iterdir()) == ["files", "key.json", "result.json", "used"]
    hit = cache.lookup(key)
    assert hit is not None and hit.digest == key.digest
    assert hit.payload == {"record": {"status": "ok"}, "advisories": ["int8 slower"]}
    assert {n: f.size for n, f in hit.files.items()} == {"model.onnx": 1000, "sub/model.onnx.data": 1000}
    placed = hit.materialise(tmp_path / "run" / "steps" / "02-prune")
    assert set(placed) == set(files)
    for name, dest in placed.items():
        assert dest == tmp_path / "run" / "steps" / "02-prune" / name
        assert dest.read_bytes() == files[name].read_bytes()
        assert dest.stat().st_ino == (entry / "files" / name).stat().st_ino  # linked, not copied
        assert not dest.stat().st_mode & 0o222  # shared with the cache: read-only
    assert not list((tmp_path / "run").rglob("*.part"))
    assert cache.lookup(_key(seed=9)) is None


def test_materialise_copies_when_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, key, files = _stored(tmp_path)
    hit = cache.lookup(key)
    assert hit is not None

    def no_link(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    placed = hit.materialise(tmp_path / "run")
    for name, dest in placed.items():
        assert dest.read_bytes() == files[name].read_bytes()
        assert dest.stat().st_ino != hit.files[name].path.stat().st_ino
        assert dest.stat().st_mode & 0o200  # an own copy: writable
    assert not list((tmp_path / "run").rglob("*.part"))


def test_materialise_leaves_no_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, key, _ = _stored(tmp_path)
    hit = cache.lookup(key)
    assert hit is not None
    real_copy = shutil.copy2
    calls = []

    def no_link(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy_then_fail(src: Any, dst: Any) -> Any:
        calls.append(dst)
        if len(calls) == 2:  # the second file: half written, then the disk fills
            Path(dst).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copy2", copy_then_fail)
    dest = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        hit.materialise(dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_missing_result_json_is_a_miss_and_a_partial_entry(tmp_path: Path) -> None:
    cache, key, _ = _stored(tmp_path)
    (cache.steps_dir / key.digest / "result.json").unlink()
    assert cache.lookup(key) is None
    [entry] = cache.ls()
    assert not entry.complete and entry.kind == "prune"
    # a later store replaces the damaged entry
    assert cache.store(key, {"m": _artifact(tmp_path / "x", "m")}, {"again": True})
    hit = cache.lookup(key)
    assert hit is not None and hit.payload == {"again": True}


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "result", "result-list", "other-digest"])
def test_corrupt_entry_is_a_miss_and_is_removed(tmp_path: Path, damage: str) -> None:
    cache, key, _ = _stored(tmp_path)
    entry = cache.steps_dir / key.digest
    cached = entry / "files" / "sub" / "model.onnx.data"
    os.chmod(cached, 0o644)
    if damage == "flip":  # same size, other bytes: only the sha256 sees it
        cached.write_bytes(bytes([9]) * 1000)
    elif damage == "truncate":
        cached.write_bytes(b"x")
    elif damage == "delete":
        cached.unlink()
    elif damage == "result":
        (entry / "result.json").write_text("{not json")
    elif damage == "result-list":
        (entry / "result.json").write_text("[]")
    else:  # an entry copied under another key's name
        result = json.loads((entry / "result.json").read_text())
        (entry / "result.json").write_text(json.dumps({**result, "digest": "0" * 64}))
    assert cache.lookup(key) is None
    assert not entry.exists() and _visible(cache) == []


def test_a_result_naming_a_file_outside_the_entry_is_corrupt(tmp_path: Path) -> None:
    cache, key, _ = _stored(tmp_path)
    result_path = cache.steps_dir / key.digest / "result.json"
    result = json.loads(result_path.read_text())
    result["files"][0]["name"] = "../../../etc/passwd"
    result_path.write_text(json.dumps(result))
    assert cache.lookup(key) is None and _visible(cache) == []


def test_a_hit_marks_the_entry_used(tmp_path: Path) -> None:
    cache, key, _ = _stored(tmp_path)
    _set_used(cache, key, 10 * DAY)
    assert cache.ls()[0].last_used.timestamp() < time.time() - 9 * DAY
    assert cache.lookup(key) is not None
    assert cache.ls()[0].last_used.timestamp() > time.time() - DAY


def test_concurrent_stores_of_one_key_leave_one_complete_entry(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # deterministic: A has assembled its entry and is about to publish when B stores and publishes
    cache, key = StepCache(), _key()
    src = {"model.onnx": _artifact(tmp_path / "src", "model.onnx")}
    real_publish = StepCache._publish
    a_ready, b_done = threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}

    def slow_publish(self: StepCache, tmp: Path, entry: Path) -> bool:
        if threading.current_thread().name == "A":
            a_ready.set()
            assert b_done.wait(10)
        return real_publish(self, tmp, entry)

    monkeypatch.setattr(StepCache, "_publish", slow_publish)
    a = threading.Thread(target=lambda: outcome.update(a=cache.store(key, src, {"by": "A"})), name="A")
    a.start()
    assert a_ready.wait(10)
    assert any(p.name.startswith(".tmp-") for p in cache.steps_dir.iterdir())
    outcome["b"] = StepCache().store(key, src, {"by": "B"})
    b_done.set()
    a.join(10)
    assert outcome == {"a": True, "b": True}
    assert _visible(cache) == [key.digest]  # A's temp folder is gone
    hit = cache.lookup(key)
    assert hit is not None and hit.payload == {"by": "B"}


def test_many_threads_storing_one_key(tmp_path: Path) -> None:
    key = _key()
    src = {"model.onnx": _artifact(tmp_path / "src", "model.onnx", 50_000)}
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def store(i: int) -> None:
        barrier.wait()
        results.append(StepCache().store(key, src, {"i": i}))

    threads = [threading.Thread(target=store, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 8
    cache = StepCache()
    assert _visible(cache) == [key.digest]
    assert cache.lookup(key) is not None


STORE_IN_A_PROCESS = """
import sys
from pathlib import Path
from compress.runner.stepcache import StepCache
from compress.runner.stepkey import StepKey
key = StepKey(kind="prune", config={"ratio": 0.5}, input_hash="a", arch="arm", versions={"edgepack": "0"})
cache = StepCache(max_bytes=10**6)
ok = cache.store(key, {"model.tflite": Path(sys.argv[1])}, {"pid": int(sys.argv[2])})
assert "torch" not in sys.modules
print(ok, key.digest, cache.last_store_error)
"""


def test_processes_storing_one_key(tmp_path: Path) -> None:
    src = _artifact(tmp_path / "src", "model.tflite", 200_000)
    procs = [subprocess.Popen([sys.executable, "-c", STORE_IN_A_PROCESS, str(src), str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, outs
    [(ok, digest, error)] = {tuple(out.split()) for out, _ in outs}
    assert (ok, error) == ("True", "None")
    cache = StepCache()
    assert _visible(cache) == [digest]
    [entry] = cache.ls()
    assert entry.complete and entry.kind == "prune"


@pytest.mark.parametrize("failure", ["copy", "not-a-folder", "name", "payload", "directory"])
def test_a_failed_store_returns_false_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         _cache_env: Path, failure: str) -> None:
    key = _key()
    files: dict[str, Path] = {"model.onnx": _artifact(tmp_path / "src", "model.onnx")}
    payload: dict[str, Any] = {"ok": 1}
    if failure == "copy":
        def full_disk(src: Any, dst: Any) -> None:
            Path(dst).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(shutil, "copy2", full_disk)
    elif failure == "not-a-folder":
        _cache_env.write_text("a file where the cache should be")
    elif failure == "name":
        files = {"../escape.onnx": files["model.onnx"]}
    elif failure == "payload":
        payload = {"value": np.float32(1.0)}
    else:
        files = {"saved_model": tmp_path / "src"}
    cache = StepCache()
    assert cache.store(key, files, payload) is False
    assert cache.last_store_error
    assert cache.lookup(key) is None
    if cache.steps_dir.is_dir():
        assert _visible(cache) == []


def test_disabled_cache_never_hits_or_stores(tmp_path: Path) -> None:
    _, key, files = _stored(tmp_path)
    off = StepCache(enabled=False)
    assert off.lookup(key) is None
    assert off.store(_key(seed=5), files, {}) is False
    assert StepCache().lookup(_key(seed=5)) is None
    assert EvalCache(enabled=False).put("a", "d", "acc", {"acc": 1.0}) is False
    assert EvalCache(enabled=False).get("a", "d", "acc") is None


def test_disabled_cache_touches_no_disk(_cache_env: Path) -> None:
    StepCache(enabled=False).store(_key(), {}, {})
    StepCache().lookup(_key())
    StepCache().ls()
    assert not _cache_env.exists()


# ---------------------------------------------------------------- ls, eviction, prune, clear


def test_ls_and_size(tmp_path: Path) -> None:
    cache, key, _ = _stored(tmp_path)
    [entry] = cache.ls()
    assert (entry.digest, entry.kind, entry.complete) == (key.digest, "prune", True)
    assert 2000 < entry.size_bytes < 2000 + 8192  # the two files and the small JSON
    assert cache.size_bytes() == entry.size_bytes
    assert abs(entry.created.timestamp() - time.time()) < 120
    assert entry.created.tzinfo is not None


def test_lru_eviction_removes_least_recently_used_first(tmp_path: Path) -> None:
    cache = StepCache(max_bytes=10**9)
    keys = [_key(seed=i) for i in range(4)]
    for i, key in enumerate(keys):
        _stored(tmp_path / str(i), cache, key, size=4000)
    ages = {0: 1 * DAY, 1: 4 * DAY, 2: 2 * DAY, 3: 3 * DAY}  # LRU order: 1, 3, 2, 0
    for i, age in ages.items():
        _set_used(cache, keys[i], age)
    one = cache.ls()[0].size_bytes
    removed, freed = cache.evict_to(2 * one + 100)
    assert removed == 2 and freed >= 2 * 8000
    assert {e.digest for e in cache.ls()} == {keys[0].digest, keys[2].digest}
    assert cache.size_bytes() <= 2 * one + 100


def test_store_evicts_down_to_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPACK_CACHE_MAX_BYTES", "20K")
    cache = StepCache()
    assert cache.max_bytes == 20 * 1024
    keys = [_key(seed=i) for i in range(4)]
    for i, key in enumerate(keys):
        _stored(tmp_path / str(i), cache, key, size=4000)  # ~8 KB an entry
        _set_used(cache, key, (10 - i) * DAY)
    assert cache.size_bytes() <= 20 * 1024
    assert [e.digest for e in cache.ls()] == [keys[3].digest, keys[2].digest]


def test_prune_by_last_use_and_stale_partials(tmp_path: Path) -> None:
    cache = StepCache()
    old, recent, partial_old, partial_new = (_key(seed=i) for i in range(4))
    for i, key in enumerate((old, recent, partial_old, partial_new)):
        _stored(tmp_path / str(i), cache, key)
    _set_used(cache, old, 40 * DAY)
    _set_used(cache, recent, 2 * DAY)
    for key in (partial_old, partial_new):
        (cache.steps_dir / key.digest / "result.json").unlink()
    ts = time.time() - 2 * 3600
    os.utime(cache.steps_dir / partial_old.digest, (ts, ts))
    leftover = cache.steps_dir / ".tmp-0123456789abcdef-crashed"
    leftover.mkdir()
    os.utime(leftover, (ts, ts))
    removed, freed = cache.prune(parse_age("30d"))
    assert removed == 3 and freed > 2000
    assert _visible(cache) == sorted([recent.digest, partial_new.digest])
    removed, freed = cache.prune(timedelta(days=1))
    assert removed == 1 and freed > 2000
    assert _visible(cache) == [partial_new.digest]  # a partial entry under an hour old may be a store under way
    assert cache.lookup(recent) is None


def test_clear(tmp_path: Path) -> None:
    cache = StepCache()
    for i in range(3):
        _stored(tmp_path / str(i), cache, _key(seed=i))
    removed, freed = cache.clear()
    assert removed == 3 and freed > 6000
    assert cache.ls() == [] and cache.size_bytes() == 0
    assert StepCache(tmp_path / "never-used").clear() == (0, 0)


# ---------------------------------------------------------------- parsing, env, eval cache


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)), (" 1.5h ", timedelta(minutes=90)), ("0s", timedelta(0)),
])
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "30x", "30 days", "1d2h", "nan d"])
def test_parse_age_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid age .*expected a number followed by s, m, h or d"):
        parse_age(text)


def test_root_sizes_and_the_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size("123") == 123 and parse_size("10G") == 10 * 1024**3 and parse_size("512MiB") == 512 * 1024**2
    assert StepCache().max_bytes == stepcache.DEFAULT_MAX_BYTES == 10 * 1024**3
    monkeypatch.setenv("EDGEPACK_CACHE", "")
    assert StepCache().root == Path.home() / ".cache" / "edgepack"
    monkeypatch.setenv("EDGEPACK_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="EDGEPACK_CACHE_MAX_BYTES: invalid size 'lots'"):
        StepCache()


def test_eval_cache_round_trip(_cache_env: Path) -> None:
    evals = EvalCache()
    spec = "accuracy@top1"
    assert evals.get("h", "d", spec) is None
    assert evals.put("h", "d", spec, {"accuracy": 0.9889, "n": 1800})
    assert evals.get("h", "d", spec) == {"accuracy": 0.9889, "n": 1800}
    assert EvalCache(_cache_env).get("h", "d", spec) == {"accuracy": 0.9889, "n": 1800}
    assert evals.get("h2", "d", spec) is None
    assert evals.get("h", "d2", spec) is None
    assert evals.get("h", "d", "accuracy@top5") is None
    assert evals.get("h", "d", spec, environment={"onnxruntime": "1.22"}) is None
    [path] = (_cache_env / "evals").glob("*.json")
    assert not list((_cache_env / "evals").glob("*.part"))
    path.write_text("{broken")
    assert evals.get("h", "d", spec) is None and not path.exists()
    assert evals.put("h", "d", spec, {"v": np.float32(1)}) is False  # not JSON-able: no exception
    assert evals.clear() == 0
