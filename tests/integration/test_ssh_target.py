"""The SSH target against a real sshd (Debian's openssh-server) on 127.0.0.1.

The test starts its own sshd with a temp config, host key and authorized key; the
"board" is this machine, reached only through SSH and SFTP. A second board runs the
agent under the emulated aarch64 Python, so the ARM-over-SSH path runs real ARM kernels.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import TargetError
from devices.specs import SshDeviceSpec
from compress.core.types import BenchSpec
from devices.ssh import SshTarget, fingerprint

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.host_pub = _keygen(folder / "host_ed25519")
        self.user_pub = _keygen(folder / "user_ed25519")
        self.user_key = folder / "user_ed25519"
        (folder / "authorized_keys").write_text(self.user_pub + "\n")
        # The remote temp dirs land here (mktemp honours TMPDIR): the test can see them go.
        self.remote_tmp = folder / "remote tmp"
        self.remote_tmp.mkdir()
        kind, b64 = self.host_pub.split()[:2]
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {b64}\n")
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {folder / 'host_ed25519'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
            "UsePAM no", "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
            f'SetEnv "TMPDIR={self.remote_tmp}"', "",
        ]))
        Path("/run/sshd").mkdir(exist_ok=True)
        self.log = open(folder / "sshd.log", "w")  # noqa: SIM115  (lives as long as the server)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sshd exited: " + (folder / "sshd.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def spec(self, **kw: object) -> SshDeviceSpec:
        base = {"host": "127.0.0.1", "port": self.port, "user": getpass.getuser(), "key": self.user_key,
                "known_hosts": self.known_hosts, "python": sys.executable, "timeout_s": 60.0}
        base.update(kw)
        return SshDeviceSpec(**base)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    if not Path(SSHD).is_file() or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server is not installed (apt-get install openssh-server; .ci/run installs it)")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def _gemm_model(path: Path) -> Path:
    """A small float model (x @ W + b, then ReLU) written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gemm_model(tmp_path_factory.mktemp("m") / "dir with spaces" / "my \"model\" it's $(touch x).onnx")


def _inputs() -> list[np.ndarray]:
    return [np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)]


def test_benchmark_through_sshd(sshd: Sshd, odd_model: Path) -> None:
    target = SshTarget("loopback", sshd.spec())
    res = target.benchmark(odd_model, BenchSpec(warmup=2, max_warmup=20, runs=15), _inputs())
    assert res.how == "measured" and res.target == "ssh:loopback" and res.error is None
    assert len(res.times_ms) == 15 and res.latency_ms.runs == 15
    assert res.parity is not None and res.parity.passed and res.parity.max_abs_diff <= 1e-6
    assert res.device.startswith(f"{getpass.getuser()}@127.0.0.1") and "x86_64" in res.details["uname"]
    assert res.details["cores"] == os.cpu_count()
    # The path with spaces, quotes and a $(...) reached the board as one file name, and the
    # remote temp dir is gone afterwards.
    assert not (odd_model.parent / "x").exists() and not Path("x").exists()
    assert [p for p in sshd.remote_tmp.iterdir() if p.is_dir()] == []


def test_describe_reports_device_facts(sshd: Sshd) -> None:
    facts = SshTarget("loopback", sshd.spec()).describe()
    assert facts["machine"] == "x86_64" and facts["cores"] == os.cpu_count()
    assert facts["onnxruntime"] and facts["uname"].startswith("Linux")


def test_changed_host_key_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other").split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(TargetError, match="CHANGED"):
        SshTarget("evil", sshd.spec(known_hosts=known)).describe()


def test_unknown_host_refused_unless_pinned(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(TargetError, match="not in known_hosts"):
        SshTarget("new", sshd.spec(known_hosts=empty)).describe()
    import paramiko

    host_key = paramiko.Ed25519Key.from_private_key_file(str(sshd.folder / "host_ed25519"))
    for pin in (sshd.host_pub, fingerprint(host_key)):
        assert SshTarget("pinned", sshd.spec(known_hosts=empty, host_key=pin)).describe()["machine"] == "x86_64"
    wrong = _keygen(tmp_path / "wrong")
    with pytest.raises(TargetError, match="not the pinned one"):
        SshTarget("pinned", sshd.spec(known_hosts=empty, host_key=wrong)).describe()


def test_timeout_is_a_clear_error(sshd: Sshd, odd_model: Path) -> None:
    spec = sshd.spec(remote_command=f"sleep 8; {sys.executable}", timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="no answer within 2 s"):
        SshTarget("slow", spec).benchmark(odd_model, BenchSpec(warmup=0, max_warmup=0, runs=1))
    assert time.monotonic() - t0 < 8
    assert [p for p in sshd.remote_tmp.iterdir() if p.is_dir()] == []  # removed on the failure path too


def test_dropped_connection_is_a_clear_error(sshd: Sshd, odd_model: Path) -> None:
    # The shell kills its own sshd session process: the connection drops mid-command.
    spec = sshd.spec(remote_command=f"kill -9 $PPID; sleep 5; {sys.executable}")
    with pytest.raises(TargetError, match="dropped"):
        SshTarget("flaky", spec).benchmark(odd_model, BenchSpec(warmup=0, max_warmup=0, runs=1))
    assert [p for p in sshd.remote_tmp.iterdir() if p.is_dir()] == []  # over a new connection


def test_unreachable_board(tmp_path: Path) -> None:
    spec = SshDeviceSpec(host="127.0.0.1", port=_free_port(), user="nobody", key=tmp_path / "k", timeout_s=3.0)
    with pytest.raises(TargetError, match="cannot connect"):
        SshTarget("gone", spec).describe()


@pytest.mark.slow
def test_arm_board_over_ssh(sshd: Sshd, odd_model: Path) -> None:
    """The board's remote command runs the emulated aarch64 Python: real ARM kernels over SSH."""
    from devices.emulated import guest_shell_command, root_dir, setup_root

    if not shutil.which("mmdebstrap") or not shutil.which("qemu-aarch64-static"):
        pytest.skip("mmdebstrap and qemu-user-static are needed (.ci/run installs them)")
    setup_root(log=lambda _: None)
    spec = sshd.spec(remote_command=guest_shell_command(root_dir(), "cortex-a72"), timeout_s=300.0)
    target = SshTarget("arm", spec)
    res = target.benchmark(odd_model, BenchSpec(warmup=0, max_warmup=0, runs=2), _inputs())
    assert "aarch64" in res.details["uname"] and "aarch64" in res.device
    assert res.parity is not None and res.parity.passed and res.parity.max_abs_diff <= 1e-4
    assert [p for p in sshd.remote_tmp.iterdir() if p.is_dir()] == []
