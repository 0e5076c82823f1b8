"""How the recipe names a board: the ``bench.ssh`` and ``bench.adb`` sections (re-exported by the recipe schema)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compress.core.checks import StrictModel


class SshDeviceSpec(StrictModel):
    """A Linux board reached over SSH (``bench.targets: [ssh:NAME]``)."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str
    key: Path | None = None
    known_hosts: Path | None = None
    host_key: str | None = Field(None, description="pin the host key: 'ssh-ed25519 AAAA...' or SHA256:... fingerprint")
    python: str = "python3"
    remote_command: str | None = Field(None, description="command that runs the agent (default: python)")
    timeout_s: float = Field(60.0, gt=0, le=86_400)


class AdbDeviceSpec(StrictModel):
    """An Android phone over adb (``bench.targets: [adb:NAME]``)."""

    serial: str | None = None
    adb_host: str = "127.0.0.1"
    adb_port: int = Field(5037, ge=1, le=65535)
    tflite_benchmark: Path | None = Field(None, description="benchmark_model binary for the phone")
    onnx_benchmark: Path | None = Field(None, description="onnxruntime_perf_test binary for the phone")
    workdir: str = "/data/local/tmp/edgepack"
