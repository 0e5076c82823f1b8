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
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.agent import take_samples
from compress.core.report_schema import TargetResult
from compress.core.errors import TargetError
from devices.specs import SshDeviceSpec
from compress.core.types import BenchSpec
from devices.local import AGENT, parse_agent_output, read_outputs, result_from_agent, write_inputs
from devices.untrusted import MAX_OUTPUTS_BYTES, MAX_RESULT_CHARS, clean_json, clean_text, one_line

PARITY_SAMPLES = 64
STDERR_TAIL = 64 * 1024  # bytes of a command's stderr kept (its end: where errors are)


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
    return f"SSH to {where} failed: {type(e).__name__}: {one_line(e, 300)}"


def _is_temp_dir(path: str) -> bool:
    """Whether ``mktemp -d`` answered a temp dir edgepack made (it is removed with ``rm -rf``)."""
    import re

    return (path.startswith("/") and "/../" not in path and "\n" not in path
            and re.fullmatch(r"edgepack\.[A-Za-z0-9]{8}", path.rsplit("/", 1)[-1]) is not None
            and clean_text(path) == path)


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
            raise TargetError(self.name, clean_text(_explain(e, s), 800)) from e
        return client

    def _exec(self, client: Any, command: str, timeout_s: float | None = None,
              limit: int = MAX_RESULT_CHARS) -> tuple[int, str, str]:
        """Run one shell command; its whole run is bounded in time and its output in size.

        A timeout, a dropped connection or more output than ``limit`` bytes is a TargetError
        (the caller kills what still runs and cleans up). The output is returned as sent
        (decoded); callers clean what they print or keep.
        """
        import paramiko

        timeout = timeout_s or self.spec.timeout_s
        deadline = time.monotonic() + timeout
        dropped = TargetError(self.name, f"the connection to {self.spec.host} dropped while running a command")
        out, err = bytearray(), bytearray()
        try:
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                raise dropped
            chan = transport.open_session(timeout=timeout)
            try:
                chan.settimeout(timeout)
                chan.exec_command(command)
                exited_at = None
                while True:
                    got = False
                    while chan.recv_ready():
                        out += chan.recv(1 << 16)
                        got = True
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(1 << 16)
                        del err[:-STDERR_TAIL]
                        got = True
                    if len(out) > limit:
                        raise TargetError(self.name, f"the board sent more than {limit} bytes of output: refused")
                    if chan.exit_status_ready():
                        exited_at = exited_at or time.monotonic()
                        # the status comes with or just before EOF; a child that keeps the
                        # output open (a daemon) does not hold the run for long
                        if not got and (chan.eof_received or chan.closed or time.monotonic() - exited_at > 2.0):
                            break
                    elif chan.closed or not transport.is_active():
                        raise dropped
                    if time.monotonic() > deadline:
                        raise TargetError(self.name, f"the board gave no answer within {timeout:.0f} s (the command "
                                                     f"did not finish; bench.ssh.{self.device_name}.timeout_s)")
                    if not got:
                        time.sleep(0.02)
                status = chan.recv_exit_status()
                if status == -1:  # the channel closed without an exit status: the session died
                    raise dropped
            finally:
                chan.close()
        except TargetError:
            raise
        except TimeoutError as e:
            raise TargetError(self.name, f"the board gave no answer within {timeout:.0f} s "
                                         f"(bench.ssh.{self.device_name}.timeout_s)") from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise TargetError(self.name, f"the connection to {self.spec.host} dropped: {type(e).__name__}: "
                                         f"{one_line(e, 200)}") from e
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

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
            _, out, err = self._exec(client, f"uname -srm; {self._python()} -c {shlex.quote(probe)}", limit=1 << 20)
            lines = out.strip().splitlines()
            facts: dict[str, Any] = {"host": self.spec.host, "uname": one_line(lines[0], 200) if lines else None}
            try:
                probed = json.loads(lines[-1])
                if not isinstance(probed, dict):
                    raise ValueError("not an object")
                facts.update({k: v for k, v in clean_json(probed).items() if k not in facts})
            except (ValueError, IndexError, RecursionError):
                facts["error"] = one_line((err or out).strip()[-600:], 300)
            _, cpu, _ = self._exec(client, "grep -m1 -iE 'model name|^Model|Hardware' /proc/cpuinfo || true",
                                   limit=1 << 16)
            facts["cpu"] = one_line(cpu.partition(":")[2].strip(), 200) or None
            return facts
        finally:
            client.close()

    def _remote_agent(self, model: Path, spec_dict: dict[str, Any], inputs_file: Path | None,
                      want_outputs: bool) -> tuple[dict[str, Any], list[np.ndarray] | None]:
        """Copy model, inputs and agent to a fresh remote temp dir, run, fetch, clean up.

        The agent runs in the process group of the command's shell (OpenSSH starts every
        command in its own session; the shell writes its pid, the group's id, to ``.pgid``).
        When the run does not end normally (timeout, dropped connection, bad output) that
        group is killed; the temp dir is removed on every path.
        """
        import paramiko

        client = self._connect()
        remote_dir = None
        finished = False
        try:
            status, out, err = self._exec(client, 'mktemp -d "${TMPDIR:-/tmp}/edgepack.XXXXXXXX"', limit=4096)
            remote_dir = out.strip()
            if status != 0 or not _is_temp_dir(remote_dir):
                bad, remote_dir = remote_dir, None
                raise TargetError(self.name, f"mktemp -d failed on the board: {one_line((err or bad).strip()[-300:])}")
            sftp = None
            try:
                sftp = client.open_sftp()
                sftp.get_channel().settimeout(self.spec.timeout_s)
                sftp.put(str(AGENT), f"{remote_dir}/agent.py")
                sftp.put(str(model), f"{remote_dir}/{model.name}")
                # ONNX external weights (model.onnx.data) travel with their model.
                for side in model.parent.glob(model.name + ".*"):
                    sftp.put(str(side), f"{remote_dir}/{side.name}")
                d = dict(spec_dict, model=f"{remote_dir}/{model.name}")
                if spec_dict.get("yardstick"):
                    # the machine yardstick travels like the model (skipped by an agent without onnxruntime)
                    sftp.put(str(spec_dict["yardstick"]), f"{remote_dir}/yardstick.onnx")
                    d["yardstick"] = f"{remote_dir}/yardstick.onnx"
                if inputs_file is not None:
                    sftp.put(str(inputs_file), f"{remote_dir}/inputs.npz")
                    d["inputs"] = f"{remote_dir}/inputs.npz"
                    if want_outputs:
                        d["outputs"] = f"{remote_dir}/outputs.npz"
                with sftp.open(f"{remote_dir}/spec.json", "w") as f:
                    f.write(json.dumps(d))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise TargetError(self.name, f"copying files to {self.spec.host} failed: {type(e).__name__}: "
                                             f"{one_line(e, 200)}") from e
            q = shlex.quote
            command = (f"echo $$ > {q(remote_dir + '/.pgid')} && cd {q(remote_dir)} && "
                       f"OMP_NUM_THREADS={int(spec_dict.get('threads', 1))} "
                       f"{self._python()} {q(remote_dir + '/agent.py')} {q(remote_dir + '/spec.json')}")
            status, out, err = self._exec(client, command)
            finished = True
            result = parse_agent_output(out + "\n" + err[-2000:], self.name)
            outputs = None
            if want_outputs and inputs_file is not None:
                outputs = self._fetch_outputs(sftp, f"{remote_dir}/outputs.npz")
            return result, outputs
        finally:
            if remote_dir:
                self._remove(client, remote_dir, kill=not finished)
            client.close()

    def _fetch_outputs(self, sftp: Any, remote: str) -> list[np.ndarray]:
        """The agent's outputs file, size-checked before it is copied, read as numeric arrays."""
        import paramiko

        with tempfile.TemporaryDirectory(prefix="edgepack-ssh-") as tmp:
            local = Path(tmp) / "outputs.npz"
            try:
                size = sftp.stat(remote).st_size or 0
                if size > MAX_OUTPUTS_BYTES:
                    raise TargetError(self.name, f"the board's outputs file is {size} bytes (more than "
                                                 f"{MAX_OUTPUTS_BYTES}): refused")
                sftp.get(remote, str(local))
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise TargetError(self.name, f"fetching the outputs from {self.spec.host} failed: "
                                             f"{type(e).__name__}: {one_line(e, 200)}") from e
            return read_outputs(local, self.name)

    def _remove(self, client: Any, remote_dir: str, kill: bool = False) -> None:
        """Remove the remote temp dir (first killing the agent's process group when ``kill``),
        over a new connection if the old one dropped."""
        q = shlex.quote(remote_dir)
        command = f"rm -rf -- {q}"
        if kill:
            # the group id is a number above 1 (kill -- -1 would signal every process of the user)
            command = (f'pg=$(cat {q}/.pgid 2>/dev/null); case "$pg" in ""|1|*[!0-9]*) ;; '
                       f'*) kill -KILL -- "-$pg" 2>/dev/null || kill -KILL "$pg" 2>/dev/null;; esac; ' + command)
        transport = client.get_transport()
        try:
            if transport is not None and transport.is_active():
                self._exec(client, command, timeout_s=30, limit=1 << 16)
                return
            fresh = self._connect()
            try:
                self._exec(fresh, command, timeout_s=30, limit=1 << 16)
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
        if spec.yardstick:
            from bench import yardstick

            d["yardstick"], d["yardstick_version"] = str(yardstick.path()), yardstick.VERSION
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

            reference = host_outputs(model, xs)
            if not outputs or outputs[0].shape != reference[0].shape:
                got = outputs[0].shape if outputs else "none"
                raise TargetError(self.name, f"the board's first output has shape {got}, the host's "
                                             f"{reference[0].shape}: not the same model's outputs")
            result.parity = crosscheck(model, reference, outputs, "host runtime")
        return result
