"""Imports go downward only: an AST scan of every project module against the layer table below.

Every import counts: module level, inside functions (lazy imports), under ``if TYPE_CHECKING:``,
and string references of the form ``"package.module"`` / ``"package.module:function"`` that
importlib resolves at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("compress", "export", "bench", "devices")

# Each project module belongs to the unit of its longest matching prefix.
UNITS: dict[str, str] = {
    # the kernel: shared types, errors, atomic file I/O, environment facts
    "compress.core": "core",
    # bench runtime and statistics
    **dict.fromkeys(["bench.agent", "bench.runtime", "bench.latency", "bench.repeats", "bench.accuracy",
                     "bench.outputs", "bench.fidelity", "bench.parity", "bench.host", "bench.yardstick",
                     "bench.fingerprint", "bench.drift", "bench.shadow"], "runtime"),
    # targets
    "devices": "devices",
    # what comes in: the recipe schema, its data, the model
    "compress.intake": "intake",
    # format exporters
    **dict.fromkeys(["export.onnx", "export.tflite", "export.onnx_inspect", "export.tflite_inspect"], "exporters"),
    # code shared by several steps
    **dict.fromkeys(["compress.steps.training", "compress.steps.pruning", "compress.steps.common"], "steplib"),
    # the steps
    "compress.steps": "steps",
    # the whole-recipe check: validates the step order against the step registry, so it sits above the steps
    "compress.intake.recipe_io": "recipe",
    # what is made of results: reports, comparisons, the trade-off, bundles
    **dict.fromkeys(["bench.report", "bench.html", "bench.svgchart", "bench.summary", "bench.compare",
                     "bench.tradeoff", "bench.shadow_report"], "report"),
    **dict.fromkeys(["export.bundle", "export.bundle_verify", "export.signing", "export.tflite_metadata",
                     "export.bundle_drift", "export.drift_reference"], "bundle"),
    # the top: the run, and the command line
    "compress.runner": "runner", "compress.search": "search",
    "compress.cli": "cli", "compress.__main__": "cli",
}

# The allowed arrows, written once: unit -> the units it may import (besides itself).
BELOW_STEPS = {"core", "runtime", "devices", "intake", "exporters", "steplib", "steps"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "runtime": {"core"},
    "devices": {"core", "runtime"},
    "intake": {"core", "runtime", "devices"},
    "exporters": {"core", "runtime", "intake"},
    "steplib": {"core", "runtime", "intake", "exporters"},
    "steps": {"core", "runtime", "devices", "intake", "exporters", "steplib"},
    "recipe": BELOW_STEPS,
    "report": {"core", "runtime", "devices", "intake"},
    "bundle": {"core", "runtime", "intake", "report"},
    "runner": BELOW_STEPS | {"recipe", "report", "bundle"},
    "search": BELOW_STEPS | {"recipe", "report", "bundle", "runner"},
    "cli": BELOW_STEPS | {"recipe", "report", "bundle", "runner", "search"},
}

# Inside the steps unit, no step imports another: shared code goes to steplib.
STEP_GROUPS: dict[str, str] = {"compress.steps.distill": "distill", "compress.steps.prune": "prune",
                               "compress.steps.qat": "qat", "compress.steps.quantize": "quantize"}


_STRING_REF = re.compile(r"^((?:%s)(?:\.\w+)+)(?::\w+)?$" % "|".join(PACKAGES))


def _longest(table: dict[str, str], module: str) -> str | None:
    keys = [k for k in table if module == k or module.startswith(k + ".")]
    return table[max(keys, key=len)] if keys else None


def unit_of(module: str) -> str | None:
    """The unit of a module, or None when the table does not assign it."""
    if module in PACKAGES:  # the namespace roots import nothing
        return "core"
    return _longest(UNITS, module)


def modules(root: Path) -> dict[str, Path]:
    """Every project module under ``root`` by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that ``module`` imports, by any of the ways listed in the docstring."""

    def resolve(name: str) -> str | None:
        while name:
            if name in known:
                return name
            name = name.rpartition(".")[0]
        return None

    tree = ast.parse(path.read_text(), str(path))
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else resolve(base))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            ref = _STRING_REF.match(node.value)
            if ref:
                found.add(resolve(ref.group(1)))
    return {m for m in found if m and m != module}


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that the layer table forbids, and every module it does not assign."""
    known = modules(root)
    problems = []
    for module, path in known.items():
        unit = unit_of(module)
        if unit is None:
            problems.append(f"{module}: no unit; add it to UNITS in tests/unit/test_layering.py")
            continue
        for target in sorted(imports_of(module, path, known)):
            to = unit_of(target)
            if to is None:
                continue  # reported as unassigned on its own
            if to != unit and to not in ALLOWED[unit]:
                problems.append(f"{module} -> {target}: {unit} may not import {to}")
            elif to == unit == "steps":
                mine, theirs = _longest(STEP_GROUPS, module), _longest(STEP_GROUPS, target)
                if mine and theirs and mine != theirs:
                    problems.append(f"{module} -> {target}: step {mine} may not import step {theirs}")
    return problems


def test_imports_go_downward() -> None:
    assert violations(ROOT) == []


def test_every_arrow_points_at_a_unit() -> None:
    units = set(UNITS.values())
    assert set(ALLOWED) == units
    assert all(allowed <= units for allowed in ALLOWED.values())


def test_the_benchmark_agent_imports_nothing_of_the_project() -> None:
    """bench/agent.py is copied to boards and run there by path."""
    known = modules(ROOT)
    assert imports_of("bench.agent", known["bench.agent"], known) == set()


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "compress/__init__.py": "",
        "compress/core/__init__.py": "",
        "compress/core/types.py": "def f():\n    from compress.runner import Runner\n    return Runner\n",
        "compress/runner/__init__.py": "Runner = object\n",
    })
    assert violations(root) == ["compress.core.types -> compress.runner: core may not import runner"]


def test_a_string_reference_and_a_step_importing_another_step_are_reported(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "compress/__init__.py": "",
        "compress/core/__init__.py": "",
        "compress/core/lookup.py": "REF = 'compress.steps.prune:prune'\n",
        "compress/steps/__init__.py": "",
        "compress/steps/prune.py": "def prune():\n    pass\n",
        "compress/steps/qat.py": "from compress.steps.prune import prune\n",
    })
    assert violations(root) == ["compress.core.lookup -> compress.steps.prune: core may not import steps",
                                "compress.steps.qat -> compress.steps.prune: step qat may not import step prune"]


def test_a_module_without_a_unit_is_reported(tmp_path: Path) -> None:
    root = _write(tmp_path, {"compress/__init__.py": "", "compress/newthing.py": ""})
    assert violations(root) == ["compress.newthing: no unit; add it to UNITS in tests/unit/test_layering.py"]
