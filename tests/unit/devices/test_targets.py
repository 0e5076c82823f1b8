"""Which targets run on ARM (the int8 defaults follow them)."""

from __future__ import annotations


def test_arm_targets_follow_the_profile_arch(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A user's own ARM board profile gets ARM int8 defaults, whatever its name."""
    import yaml

    import devices.estimate as est
    from devices.targets import is_arm_target

    shipped = est.PROFILES_DIR
    for src, name in (("rpi4", "myboard"), ("cloud_x86", "rpi-like-name-but-x86")):
        data = yaml.safe_load((shipped / f"{src}.yaml").read_text())
        data["name"] = name
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(est, "_user_profiles_dir", lambda: tmp_path)
    assert is_arm_target("estimate:myboard") and is_arm_target("estimate:rpi4") and is_arm_target("emulated:aarch64")
    assert not is_arm_target("estimate:rpi-like-name-but-x86") and not is_arm_target("estimate:cloud_x86")
    assert not is_arm_target("estimate:no-such-profile") and not is_arm_target("local")
