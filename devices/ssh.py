"""A Linux board over SSH: the benchmark agent copied to it and run with its own Python.

Trust comes from the host key: it must match ``known_hosts`` (the spec's file or
``~/.ssh/known_hosts``), or the key the recipe pins in ``host_key`` (``ssh-ed25519 AAAA...``
or a ``SHA256:...`` fingerprint). An unknown or changed key is refused, never added.
Authentication is by key only. Everything sent to the remote shell is quoted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.agent import take_samples
from bench.report import TargetResult
from compress.errors import TargetError
from compress.recipe import SshDeviceSpec
from devices.base import BenchSpec
from devices.local import AGENT, parse_agent_output, read_outputs, result_from_agent, write_inputs

PARITY_SAMPLES = 64


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_matches_pin(key: Any, pin: str) -> bool:
    """Whether a server key is the pinned one (``TYPE BASE64 [comment]`` or ``SHA256:...``)."""
    pin = pin.strip()
    if pin.startswith("SHA256:"):
        return fingerprint(key) == pin.rstrip("=")
    parts = pin.split()
    if len(parts) < 2:
        return False
    return parts[0] == key.get_name() and parts[1] == key.get_base64()


def _pinned_policy(pin: str, host: str) -> Any:
    import paramiko

    class PinnedKey(paramiko.MissingHostKeyPolicy):
        """Accept exactly the pinned key; known_hosts is not consulted."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if not key_matches_pin(key, pin):
                raise paramiko.SSHException(
                    f"host key of {host} is {key.get_name()} {fingerprint(key)}, not the pinned one ({pin[:60]})")

    return PinnedKey()


def _explain(e: BaseException, spec: SshDeviceSpec) -> str:
    """A user's message for what went wrong while connecting."""
    import paramiko

    where = f"{spec.user}@{spec.host}:{spec.port}"
    if isinstance(e, paramiko.BadHostKeyException):
        return (f"the host key of {where} CHANGED: known_hosts has {fingerprint(e.expected_key)}, the server offers "
                f"{e.key.get_name()} {fingerprint(e.key)}; refusing to connect. If the board was reinstalled, "
                f"remove its old line with `ssh-keygen -R {spec.host}` or pin the new key in host_key")
    if isinstance(e, paramiko.AuthenticationException):
        return f"key authentication to {where} failed ({e}); set bench.ssh.<name>.key to a private key the board accepts"
    if isinstance(e, TimeoutError):
        return f"no answer from {where} within {spec.timeout_s:.0f} s"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return f"cannot connect to {where}: {e}"
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return (f"the host key of {where} is not in known_hosts: refusing an unknown host. Check the key once with "
                f"`ssh -p {spec.port} {spec.user}@{spec.host}` (it adds it to known_hosts) or pin it in host_key")
    return f"SSH to {where} failed: {type(e).__name__}: {e}"


class SshTarget:
    """A board reached with paramiko; latencies are measured there by the agent."""

    how = "measured"
    formats = ("onnx", "tflite")

    def __init__(self, name: str, spec: SshDeviceSpec) -> None:
        self.device_name = name
        self.name = f"ssh:{name}"
        self.spec = spec

    # ------------------------------------------------------------ connection

    def _connect(self) -> Any:
        import paramiko

        s = self.spec
        client = paramiko.SSHClient()
        if s.host_key:
            client.set_missing_host_key_policy(_pinned_policy(s.host_key, s.host))
        else:
            known = Path(s.known_hosts).expanduser() if s.known_hosts else Path.home() / ".ssh" / "known_hosts"
            if known.is_file():
                client.load_host_keys(str(known))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        kwargs: dict[str, Any] = {"hostname": s.host, "port": s.port, "username": s.user, "timeout": s.timeout_s,
                                  "banner_timeout": s.timeout_s, "auth_timeout": s.timeout_s}
        if s.key:
            kwargs.update(key_filename=str(Path(s.key).expanduser()), look_for_keys=False, allow_agent=False)
        try:
            client.connect(**kwargs)
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise TargetError(self.name, _explain(e, s)) from e
        return client

    def _exec(self, client: Any, command: str, timeout_s: float | None = None) -> tuple[int, str, str]:
        """Run one shell command; a timeout or a dropped connection is a TargetError."""
        import paramiko

        timeout = timeout_s or self.spec.timeout_s
        try:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except TimeoutError as e:
            raise TargetError(self.name, f"the board gave no answer within {timeout:.0f} s "
                                         f"(bench.ssh.{self.device_name}.timeout_s)") from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise TargetError(self.name, f"the connection to {self.spec.host} dropped: {type(e).__name__}: {e}") from e
        if status == -1 and not client.get_transport().is_active():
            raise TargetError(self.name, f"the connection to {self.spec.host} dropped while running the agent")
        return status, out, err

    def _python(self) -> str:
        # remote_command is the user's own shell prefix (e.g. an emulator or a venv's
        # python); only the arguments edgepack adds are quoted.
        return self.spec.remote_command or shlex.quote(self.spec.python)

    # ------------------------------------------------------------ protocol

    def describe(self) -> dict[str, Any]:
        """uname, CPU model, cores and the runtimes the board's Python can import."""
        client = self._connect()
        try:
            probe = ("import json, platform, os\nr = {'machine': platform.machine(), 'python': platform.python_version(),"
                     " 'cores': os.cpu_count()}\nfor m in ('onnxruntime', 'ai_edge_litert', 'tflite_runtime', 'numpy'):\n"
                     "    try:\n        mod = __import__(m)\n        r[m] = getattr(mod, '__version__', 'yes')\n"
                     "    except Exception as e:\n        r[m] = None\nprint(json.dumps(r))\n")
            _, out, err = self._exec(client, f"uname -srm; {self._python()} -c {shlex.quote(probe)}")
            lines = out.strip().splitlines()
            facts: dict[str, Any] = {"host": self.spec.host, "uname": lines[0] if lines else None}
            try:
                facts.update(json.loads(lines[-1]))
            except (ValueError, IndexError):
                facts["error"] = (err or out).strip()[-300:]
            _, cpu, _ = self._exec(client, "grep -m1 -iE 'model name|^Model|Hardware' /proc/cpuinfo || true")
            facts["cpu"] = cpu.partition(":")[2].strip() or None
            return facts
        finally:
            client.close()

    def _remote_agent(self, model: Path, spec_dict: dict[str, Any], inputs_file: Path | None,
                      want_outputs: bool) -> tuple[dict[str, Any], list[np.ndarray] | None]:
        """Copy model, inputs and agent to a fresh remote temp dir, run, fetch, clean up."""
        import paramiko

        client = self._connect()
        remote_dir = None
        try:
            status, out, err = self._exec(client, "mktemp -d")
            remote_dir = out.strip()
            if status != 0 or not remote_dir.startswith("/"):
                raise TargetError(self.name, f"mktemp -d failed on the board: {(err or out).strip()[-300:]}")
            try:
                sftp = client.open_sftp()
                sftp.get_channel().settimeout(self.spec.timeout_s)
                names = {"agent": "agent.py", "model": model.name}
                sftp.put(str(AGENT), f"{remote_dir}/agent.py")
                sftp.put(str(model), f"{remote_dir}/{model.name}")
                # ONNX external weights (model.onnx.data) travel with their model.
                for side in model.parent.glob(model.name + ".*"):
                    sftp.put(str(side), f"{remote_dir}/{side.name}")
                d = dict(spec_dict, model=f"{remote_dir}/{names['model']}")
                if inputs_file is not None:
                    sftp.put(str(inputs_file), f"{remote_dir}/inputs.npz")
                    d["inputs"] = f"{remote_dir}/inputs.npz"
                    if want_outputs:
                        d["outputs"] = f"{remote_dir}/outputs.npz"
                with sftp.open(f"{remote_dir}/spec.json", "w") as f:
                    f.write(json.dumps(d))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise TargetError(self.name, f"copying files to {self.spec.host} failed: {type(e).__name__}: {e}") from e
            q = shlex.quote
            command = (f"cd {q(remote_dir)} && OMP_NUM_THREADS={int(spec_dict.get('threads', 1))} "
                       f"{self._python()} {q(remote_dir + '/agent.py')} {q(remote_dir + '/spec.json')}")
            status, out, err = self._exec(client, command)
            result = parse_agent_output(out + "\n" + err[-2000:], self.name)
            outputs = None
            if want_outputs and inputs_file is not None:
                with tempfile.TemporaryDirectory(prefix="edgepack-ssh-") as tmp:
                    local = Path(tmp) / "outputs.npz"
                    try:
                        sftp.get(f"{remote_dir}/outputs.npz", str(local))
                    except (paramiko.SSHException, OSError, EOFError) as e:
                        raise TargetError(self.name, f"fetching the outputs from {self.spec.host} failed: {e}") from e
                    outputs = read_outputs(local)
            return result, outputs
        finally:
            if remote_dir and remote_dir.startswith("/"):
                self._remove(client, remote_dir)
            client.close()

    def _remove(self, client: Any, remote_dir: str) -> None:
        """Remove the remote temp dir, over a new connection if the old one dropped."""
        command = f"rm -rf -- {shlex.quote(remote_dir)}"
        transport = client.get_transport()
        try:
            if transport is not None and transport.is_active():
                self._exec(client, command, timeout_s=30)
                return
            fresh = self._connect()
            try:
                self._exec(fresh, command, timeout_s=30)
            finally:
                fresh.close()
        except TargetError:
            pass  # the board is gone: nothing more can be cleaned from here

    def run(self, model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="edgepack-in-") as tmp:
            p = Path(tmp) / "inputs.npz"
            write_inputs(p, inputs)
            spec = {"threads": 1, "warmup": 0, "max_warmup": 0, "runs": 1, "batch": 1}
            _, outputs = self._remote_agent(Path(model), spec, p, want_outputs=True)
        if outputs is None:
            raise TargetError(self.name, "the board returned no outputs")
        return outputs

    def benchmark(self, model: Path, spec: BenchSpec, inputs: list[np.ndarray] | None = None) -> TargetResult:
        """Time the model on the board; with inputs, also check its outputs against the host's."""
        model = Path(model)
        d: dict[str, Any] = {"threads": spec.threads, "warmup": spec.warmup, "max_warmup": spec.max_warmup,
                             "runs": spec.runs, "batch": spec.batch}
        if spec.cpus:
            d["cpus"] = list(spec.cpus)
        with tempfile.TemporaryDirectory(prefix="edgepack-in-") as tmp:
            p = None
            xs = None
            if inputs is not None:
                xs = take_samples(inputs, slice(0, PARITY_SAMPLES))
                p = Path(tmp) / "inputs.npz"
                write_inputs(p, xs)
            out, outputs = self._remote_agent(model, d, p, want_outputs=xs is not None)
        result = result_from_agent(out, self.name, self.how, spec)
        dev = out.get("device", {})
        result.device = f"{self.spec.user}@{self.spec.host}: {result.device}"
        result.details.update({"uname": f"{dev.get('system')} {dev.get('release')} {dev.get('machine')}",
                               "cores": dev.get("cores"), "python": dev.get("python"), "host": self.spec.host})
        if outputs is not None and xs is not None:
            from devices.crosscheck import crosscheck, host_outputs

            result.parity = crosscheck(model, host_outputs(model, xs), outputs, "host runtime")
        return result
