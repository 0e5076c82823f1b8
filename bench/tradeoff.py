"""Cloud vs device: where should the model run, with the numbers that decide it.

For each artifact, the on-device side is its latency on a device target (measured on a
board, or estimated from a device profile, or this host when there is nothing else),
its size against the app budget, and its energy when the profile gives a power figure.
The cloud side is the server's time per item (measured here on batched inputs, a stand-in
for one server core), plus the network: the real input and output tensor bytes (or the
raw upload size the recipe gives), the round-trip time and the bandwidth of a network
profile, and the cost per million inferences from an instance price and the measured
throughput. Every figure says where it came from; the assumptions are listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compress.intake.recipe_sections import NETWORKS
from devices.names import TargetName, try_parse

PROFILES_DIR = Path(__file__).resolve().parent.parent / "devices" / "profiles"


@dataclass
class Side:
    """One side of a scenario: latency per inference and where the figure came from."""

    latency_ms: float
    how: str
    source: str


_DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}


def _bytes_of(specs: list[dict[str, Any]], batch: int = 1) -> int | None:
    """Bytes of one request's tensors, every input (or output) counted; None if a size is unknown.

    A spec's ``request_shape`` (the shape the benchmark really fed, batch axis at 1) wins;
    else its ``shape`` with the batch axis (``batch_axis``, default 0; ``None``: a fixed
    input) at ``batch``. A dynamic size (-1) elsewhere is unknown, never taken as 1.
    """
    total = 0
    for s in specs or []:
        shape = s.get("request_shape")
        if shape is None:
            ax = s.get("batch_axis", 0)
            shape = [batch if i == ax else int(d) for i, d in enumerate(s.get("shape", []))]
        if any(int(d) < 0 for d in shape):
            return None
        total += math.prod(int(d) for d in shape) * _DTYPE_BYTES.get(str(s.get("dtype", "float32")), 4)
    return total


def _recipe_input_specs(recipe: Any) -> list[dict[str, Any]]:
    """The recipe's inputs at their resolved shapes (dynamic dims filled by the data or ``dynamic``)."""
    out = []
    for s in recipe.model.input_specs() or []:
        out.append({"name": s.name, "shape": s.resolved_shape(1), "dtype": s.dtype, "batch_axis": s.batch_axis})
    return out


def _profile_power(target: str) -> float | None:
    profile = (try_parse(target) or TargetName("local")).profile
    if profile is None:
        return None
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    power = data.get("power_w") or data.get("power_watts")
    return float(power) if power else None


def _device_side(art: Any, wanted: str | None) -> tuple[Side | None, str | None]:
    """The on-device latency: the wanted target, else the first non-local one with a latency, else local."""
    results = [t for t in art.targets if t.latency_ms is not None and t.batch == 1 and t.threads == min(
        (x.threads for x in art.targets if x.latency_ms is not None), default=1)]
    order = [t for t in results if wanted and t.target == wanted]
    order += [t for t in results if t.target != "local" and t.how in ("measured", "estimated")]
    order += [t for t in results if t.target == "local"]
    if not order:
        return None, None
    t = order[0]
    src = f"{t.how} on {t.target} ({t.device}), {t.latency_ms.runs} runs, {t.threads} thread(s)"
    if t.target == "local":
        src += "; no device target measured or estimated it, so this host stands in for the device"
    return Side(t.latency_ms.p50, t.how, src), t.target


def _server_side(art: Any, batch: int) -> tuple[float, float, str] | None:
    """(ms per item, items per second per core, source) from local batched runs."""
    timed = [t for t in art.targets if t.target == "local" and t.latency_ms is not None and t.how == "measured"]
    if not timed:
        return None
    # One thread stands in for one server core; without a 1-thread run, the fewest threads
    # measured, counted as that many cores' time (a pessimistic per-core rate).
    threads = min(t.threads for t in timed)
    local = [t for t in timed if t.threads == threads]
    best = next((t for t in local if t.batch == batch), None) or max(local, key=lambda t: t.batch)
    per_item = best.latency_ms.p50 / best.batch
    per_core_items_s = 1e3 / (per_item * threads)
    src = (f"measured on this host, batch {best.batch}, {threads} thread{'s' if threads > 1 else ''} "
           f"({best.latency_ms.runs} runs), standing in for "
           + ("one server core" if threads == 1 else f"{threads} server cores"))
    return per_item, per_core_items_s, src


def _io_specs(art: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    for t in art.targets:
        if t.details.get("inputs"):
            return t.details["inputs"], t.details.get("outputs", [])
    return art.metadata.get("inputs", []), art.metadata.get("outputs", [])


def _profile_server_side(art: Any, profile: str, batch: int, run_dir: Path | None) -> tuple[float, float, str] | None:
    """(ms per item, items per second per core, source) estimated from a cloud device profile."""
    from compress.core.types import BenchSpec
    from devices.estimate import EstimateTarget

    if not art.path:
        return None
    path = Path(art.path)
    if not path.is_absolute() and run_dir is not None:
        path = run_dir / path
    if not path.is_file():
        return None
    res = EstimateTarget(profile).benchmark(path, BenchSpec(threads=1, batch=batch))
    if res.latency_ms is None or res.latency_ms.p50 <= 0:
        return None
    per_item = res.latency_ms.p50 / batch
    lo, hi = res.estimate_band_ms or (res.latency_ms.p50, res.latency_ms.p50)
    src = (f"estimated from the {profile} profile ({res.device}), batch {batch}, one core; "
           f"band {_ms(lo)}-{_ms(hi)} ms per batch")
    return per_item, 1e3 / per_item, src


def tradeoff_section(report: Any, recipe: Any, run_dir: Path | None = None) -> dict[str, Any]:
    """Scenarios per artifact and network, verdicts, break-even points, assumptions.

    Args:
        run_dir: The run folder, to find artifact files when ``tradeoff.cloud.profile``
            asks for the server time from a device profile instead of this host.
    """
    cfg = recipe.tradeoff
    networks = dict(NETWORKS)
    networks.update({k: v.model_dump() for k, v in getattr(cfg, "networks", {}).items()})
    budgets = cfg.budgets
    in_specs_default = _recipe_input_specs(recipe)
    scenarios: list[dict[str, Any]] = []
    for art in report.artifacts:
        device, device_target = _device_side(art, cfg.device)
        if cfg.cloud.profile is not None:
            server = _profile_server_side(art, cfg.cloud.profile, cfg.cloud.batch, run_dir)
        else:
            server = _server_side(art, cfg.cloud.batch)
        if device is None or server is None:
            continue
        server_ms, per_core_items_s, server_src = server
        in_specs, out_specs = _io_specs(art)
        up_bytes = cfg.raw_input_bytes or _bytes_of(in_specs) or _bytes_of(in_specs_default)
        if up_bytes is None:
            continue  # a dynamic input size nothing resolved: no honest transfer time
        down_bytes = _bytes_of(out_specs) or 4 * max(len(recipe.task.labels or []), 1)
        throughput = per_core_items_s * cfg.cloud.cores
        cost_per_m = cfg.cloud.price_per_hour / (throughput * 3600) * 1e6
        size_mb = (art.size_bytes or 0) / 1e6
        power = _profile_power(device_target or "")
        energy_mj = power * device.latency_ms if power else None
        for net_name in cfg.network:
            net = networks.get(net_name)
            if net is None:
                continue
            transfer_ms = up_bytes * 8 / (net["up_mbps"] * 1e3) + down_bytes * 8 / (net["down_mbps"] * 1e3)
            cloud_ms = net["rtt_ms"] + transfer_ms + server_ms
            break_even_rtt = device.latency_ms - server_ms - transfer_ms
            wins = {
                "latency": "device" if device.latency_ms <= cloud_ms else "cloud",
                "cost": "device",  # the user's own hardware: no marginal cost per inference
                "privacy_offline": "device",
            }
            notes = []
            if budgets.size_mb is not None and size_mb > budgets.size_mb:
                wins["size"] = "cloud"
                notes.append(f"cloud wins on model size: {size_mb:.1f} MB is above the {budgets.size_mb:g} MB budget")
            elif budgets.size_mb is not None:
                wins["size"] = "device"
            meets = {}
            if budgets.latency_ms is not None:
                meets = {"device": device.latency_ms <= budgets.latency_ms, "cloud": cloud_ms <= budgets.latency_ms}
            verdict = (
                f"on device: {_ms(device.latency_ms)} ms p50 ({device.how}), {size_mb:.3g} MB"
                + (f", {energy_note(energy_mj)} per inference" if energy_mj is not None else "") + "; "
                f"cloud over {net_name}: {_ms(cloud_ms)} ms p50, ${cost_per_m:.3g} per 1M; "
                f"{wins['latency']} wins on latency, device wins on cost"
                + ("".join(f"; {n}" for n in notes))
            )
            if budgets.latency_ms is not None:
                ok = [k for k, v in meets.items() if v]
                verdict += f"; within the {budgets.latency_ms:g} ms budget: {', '.join(ok) or 'neither'}"
            scenarios.append({
                "artifact": art.name, "network": net_name, "device_target": device_target,
                "device": {"latency_ms": device.latency_ms, "how": device.how, "source": device.source,
                           "size_mb": size_mb, "energy_mj": energy_mj},
                "cloud": {"latency_ms": cloud_ms, "server_ms": server_ms, "transfer_ms": transfer_ms,
                          "rtt_ms": net["rtt_ms"], "upload_bytes": up_bytes, "download_bytes": down_bytes,
                          "cost_per_million_usd": cost_per_m, "throughput_items_s": throughput,
                          "server_source": server_src},
                "wins": wins, "meets_latency_budget": meets,
                "break_even_rtt_ms": break_even_rtt,
                "break_even_note": (
                    f"the cloud is faster when the round trip is below {_ms(break_even_rtt)} ms"
                    if break_even_rtt > 0 else
                    "the cloud cannot be faster at any round-trip time: transfer and server time alone exceed the device's latency"
                ),
                "instance_capacity_rps": throughput,
                "verdict": verdict,
            })
    assumptions = [
        f"cloud instance: ${cfg.cloud.price_per_hour:g}/hour, {cfg.cloud.cores} cores each serving as fast as "
        + (f"one core of the {cfg.cloud.profile} profile (estimated)" if cfg.cloud.profile else "one core of this host")
        + f" at batch {cfg.cloud.batch}, fully utilised (cost per 1M is a lower bound)",
        "upload: " + (f"{cfg.raw_input_bytes} bytes of raw input as the recipe states" if cfg.raw_input_bytes
                      else "the model's input tensors as they are (no compression)"),
        "networks: " + "; ".join(f"{n}: RTT {networks[n]['rtt_ms']:g} ms, up {networks[n]['up_mbps']:g} Mbit/s, "
                                 f"down {networks[n]['down_mbps']:g} Mbit/s" for n in cfg.network if n in networks),
        "device cost per inference is taken as zero (the user's hardware); energy only where the profile gives power",
        "latency figures are medians (p50); queueing, TLS set-up and cold starts on the server are not included",
    ]
    unknown = [n for n in cfg.network if n not in networks]
    if unknown:
        assumptions.append(f"unknown network profiles ignored: {', '.join(unknown)} (define them under tradeoff.networks)")
    section = {"scenarios": scenarios, "assumptions": assumptions, "networks": {n: networks[n] for n in cfg.network if n in networks}}
    section["markdown"] = render_tradeoff_markdown(section)
    return section


def by_artifact(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenarios collapsed to one row per artifact: its device side once, then per network
    the cloud's latency, the winner on latency and the break-even round trip."""
    rows: dict[str, dict[str, Any]] = {}
    for s in section["scenarios"]:
        row = rows.setdefault(s["artifact"], {"artifact": s["artifact"], "device_target": s["device_target"],
                                              "device": s["device"], "cost_per_million_usd":
                                              s["cloud"]["cost_per_million_usd"], "networks": {}})
        row["networks"][s["network"]] = {
            "cloud_ms": s["cloud"]["latency_ms"], "winner": s["wins"]["latency"],
            "break_even_rtt_ms": s["break_even_rtt_ms"],
            "within_budget": s["meets_latency_budget"].get("cloud") if s["meets_latency_budget"] else None}
    return list(rows.values())


def render_tradeoff_markdown(section: dict[str, Any]) -> str:
    """One row per artifact; per network, the cloud's p50 and who wins on latency."""
    lines = ["## Cloud vs device", ""]
    if not section["scenarios"]:
        lines.append("No artifact has both a device latency and a local server measurement: nothing to compare.")
        return "\n".join(lines)
    nets = list(dict.fromkeys(s["network"] for s in section["scenarios"]))
    lines += ["| artifact | device p50 | size | cloud $ per 1M | " + " | ".join(f"{n}: cloud p50, faster" for n in nets)
              + " |", "|---|---|---|---|" + "---|" * len(nets)]
    for row in by_artifact(section):
        d = row["device"]
        cells = []
        for n in nets:
            c = row["networks"].get(n)
            cells.append("-" if c is None else f"{_ms(c['cloud_ms'])} ms, **{c['winner']}** "
                         f"(break-even RTT {_rtt(c['break_even_rtt_ms'])})")
        lines.append(f"| {row['artifact']} | {_ms(d['latency_ms'])} ms ({d['how']}, {row['device_target']}) "
                     f"| {_size(d['size_mb'])} | ${row['cost_per_million_usd']:.3g} | " + " | ".join(cells) + " |")
    lines += ["", "Cloud p50 = round trip + transfer + server time. The device wins on cost (the user's hardware) "
              "and on privacy and offline use in every row. Budgets per scenario are in "
              "`report.json` (`tradeoff.scenarios`). Break-even RTT: the round trip below which the cloud would be faster.", "", "Assumptions:", ""]
    lines += [f"- {a}" for a in section["assumptions"]]
    return "\n".join(lines)


def _size(mb: float) -> str:
    return f"{mb * 1e3:.1f} kB" if mb < 1 else f"{mb:.2f} MB"


def _rtt(ms: float) -> str:
    return f"{_ms(ms)} ms" if ms > 0 else "none (device always faster)"


def _ms(x: float) -> str:
    """Milliseconds to three significant figures: a 4 µs model must not print as 0.00 ms."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def energy_note(energy_mj: float | None) -> str:
    return "-" if energy_mj is None or math.isnan(energy_mj) else f"{energy_mj:.2f} mJ"
