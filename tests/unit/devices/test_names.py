"""Target names are read in one place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compress.core.errors import TargetNameError
from devices.names import TargetName, parse_target, try_parse


@pytest.mark.parametrize(("name", "kind", "arg", "measured", "reachable"), [
    ("local", "local", "", True, False),
    ("ssh:pi", "ssh", "pi", True, True),
    ("adb", "adb", "", True, True),
    ("adb:phone", "adb", "phone", True, True),
    ("emulated:aarch64", "emulated", "aarch64", False, True),
    ("estimate:rpi4", "estimate", "rpi4", False, False),
])
def test_known_names(name: str, kind: str, arg: str, measured: bool, reachable: bool) -> None:
    t = parse_target(name)
    assert (t.kind, t.arg, t.measured, t.reachable, str(t)) == (kind, arg, measured, reachable, name)
    assert t.profile == (arg if kind == "estimate" else None)


@pytest.mark.parametrize("name", ["", "gpu", "ssh", "ssh:", "estimate:", "emulated", "local:x", "phone:adb"])
def test_bad_names_say_what_is_accepted(name: str) -> None:
    with pytest.raises(TargetNameError) as e:
        parse_target(name)
    assert e.value.exit_code == 2 and (name in str(e.value) or not name)
    assert try_parse(name) is None


@given(st.sampled_from(["ssh", "adb", "emulated", "estimate"]), st.from_regex(r"[\w.-]{1,12}", fullmatch=True))
def test_round_trip(kind: str, arg: str) -> None:
    assert parse_target(f"{kind}:{arg}") == TargetName(kind, arg)  # type: ignore[arg-type]
