"""Fit the estimator's shipped efficiencies on this machine, then check it against published numbers.

Run: ``nice -n 10 python docs/estimator_check.py [--out DIR]`` (a few minutes on 2 cores).

1. Calibration set: small CNNs built in-process (the digits CNN, MobileNetV2-style nets on
   1x64x64 inputs at widths 1.0 and 0.5, fp32 and int8 QDQ), each timed here by the local
   target with 1 thread (2-thread runs on this shared 2-core machine are noise) and saved
   as an ordinary ``report.json``; ``devices.estimate.calibrate`` fits the x86 family from
   it, as ``compress devices calibrate RUN`` would.
2. ARM family: MobileNet v1 and v2 (1.0, 224x224, fp32 and int8) on the ``rpi4`` profile at
   4 threads, fitted to the XNNPACK README's Raspberry Pi 4 numbers (Google's own
   measurements, i.e. saved real-device runs). Its error is reported leave-one-out: each
   number predicted by a fit on the other three. The TildAlice number is never fitted.
   The x86-fitted efficiencies applied to the Pi show what a cross-ISA transfer costs.

The printed YAML goes into ``devices/profiles/efficiency.yaml``; the table into docs/devices.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes" / "models"))

# (model, precision, threads, published ms, source)
XNNPACK = ("XNNPACK README, Raspberry Pi table (RPi 4 BCM2711, ARM64 column; end2end-bench, 4 threads, Feb 2022)",
           "https://github.com/google/XNNPACK/blob/master/README.md")
TILDALICE = ("TildAlice, 'MobileNet vs EfficientNet-Lite: Pi 4 First Model 38ms Gap' (TFLite, Pi 4 CPU)",
             "https://dev.to/tildalice/mobilenet-vs-efficientnet-lite-pi-4-first-model-38ms-gap-3l84")
REFERENCES = [
    ("mobilenet_v1", "fp32", 4, 77.0, XNNPACK),
    ("mobilenet_v2", "fp32", 4, 46.0, XNNPACK),
    ("mobilenet_v1", "int8", 4, 24.0, XNNPACK),
    ("mobilenet_v2", "int8", 4, 17.0, XNNPACK),
    ("mobilenet_v1", "fp32", 4, 87.0, TILDALICE),
]


def mobilenet_v1(num_classes: int = 1000):
    """MobileNet v1 1.0 (Howard et al. 2017): 13 depthwise-separable blocks, 569M MACs at 224."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    cfg = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
        [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                         *[block(a, b, s) for a, b, s in cfg], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1024, num_classes))


def export_onnx(model, shape: tuple[int, ...], path: Path) -> Path:
    import torch

    model.eval()
    torch.onnx.export(model, (torch.randn(*shape),), str(path), dynamo=True, external_data=False,
                      dynamic_shapes=None)
    return path


def quantize(src: Path, dst: Path, shape: tuple[int, ...]) -> Path:
    """Static int8 QDQ, uint8 activations and per-channel weights (the fast x86 and ARM layout)."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def calibration_set(folder: Path) -> list[tuple[str, str, Path]]:
    import digits
    import mobilenet
    import torch

    torch.manual_seed(0)
    items = []
    m = digits.teacher()
    items.append(("digits", "fp32", export_onnx(m, (1, 1, 8, 8), folder / "digits.onnx")))
    for width in (1.0, 0.5):
        net = mobilenet.MobileNetV2(num_classes=10, width=width)
        f = export_onnx(net, (1, 1, 64, 64), folder / f"mnv2_{width}.onnx")
        items.append((f"mnv2-64px-w{width}", "fp32", f))
        items.append((f"mnv2-64px-w{width}", "int8", quantize(f, folder / f"mnv2_{width}_int8.onnx", (1, 1, 64, 64))))
    return items


def measure(items: list[tuple[str, str, Path]], run_dir: Path, runs: int) -> Path:
    """Time each model here and write an ordinary report.json for calibrate()."""
    import time

    from bench.agent import device_facts
    from compress.core.report_schema import ArtifactReport, Report
    from compress.core.types import BenchSpec
    from devices.local import LocalTarget

    target = LocalTarget()
    arts = []
    for name, precision, path in items:
        results = []
        for threads in (1,):
            r = target.benchmark(path, BenchSpec(threads=threads, warmup=20, runs=runs))
            print(f"  measured {name} {precision} {threads} thr: {r.latency_ms.p50:.3f} ms", flush=True)
            results.append(r)
        arts.append(ArtifactReport(name=f"{name}-{precision}", format="onnx", path=str(path), size_bytes=path.stat().st_size,
                                   precision=precision, targets=results))
    report = Report(recipe={"name": "estimator-calibration"}, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    env=device_facts(), artifacts=arts)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(report.model_dump_json(indent=1))
    return run_dir


def arm_check(out: Path, x86_params: dict[str, float]) -> dict[str, object]:
    """Fit the ARM family on the XNNPACK Raspberry Pi 4 numbers; leave-one-out errors."""
    import mobilenet
    import torch

    from devices.estimate import default_efficiencies, estimate_ms, fit, load_profile
    from devices.graph_cost import model_layers, summarize_layers

    torch.manual_seed(0)
    ref_models = {
        "mobilenet_v1": export_onnx(mobilenet_v1(), (1, 3, 224, 224), out / "mobilenet_v1.onnx"),
        "mobilenet_v2": export_onnx(mobilenet.MobileNetV2(num_classes=1000, width=1.0, in_channels=3),
                                    (1, 3, 224, 224), out / "mobilenet_v2.onnx"),
    }
    layers = {}
    for name, f in ref_models.items():
        layers[(name, "fp32")] = model_layers(f)
        layers[(name, "int8")] = model_layers(quantize(f, out / f"{name}_int8.onnx", (1, 3, 224, 224)))
        print(f"  {name}: {summarize_layers(layers[(name, 'fp32')])['macs'] / 1e6:.0f}M MACs", flush=True)
    rpi4 = load_profile("rpi4")
    samples = [{"layers": layers[(m, p)], "profile": rpi4, "threads": t, "ms": ms, "what": f"{m} {p} ({title[:20]})"}
               for m, p, t, ms, (title, _) in REFERENCES if (title, _) == XNNPACK]
    prior = default_efficiencies("arm")["params"]
    params, rms, _ = fit(samples, prior)
    loo = []
    for i, s in enumerate(samples):
        p_i, _, _ = fit(samples[:i] + samples[i + 1:], prior)
        loo.append(estimate_ms(s["layers"], rpi4, p_i, s["threads"]))
    loo_err = [math.log(p / s["ms"]) for p, s in zip(loo, samples)]
    loo_rms = math.sqrt(sum(e * e for e in loo_err) / len(loo_err))
    rows = ["| model | threads | published ms | fitted on all 4 | leave-one-out | x86-fitted (cross-ISA) | source |",
            "|---|---|---|---|---|---|---|"]
    j = 0
    for m, p, t, ms, (title, url) in REFERENCES:
        full = estimate_ms(layers[(m, p)], rpi4, params, t)
        cross = estimate_ms(layers[(m, p)], rpi4, x86_params, t)
        if (title, url) == XNNPACK:
            lo = f"{loo[j]:.1f} ({100 * (loo[j] / ms - 1):+.0f}%)"
            j += 1
        else:
            lo = "not fitted"
        rows.append(f"| {m} {p} | {t} | {ms:.0f} | {full:.1f} ({100 * (full / ms - 1):+.0f}%) | {lo} | "
                    f"{cross:.1f} ({100 * (cross / ms - 1):+.0f}%) | [{title}]({url}) |")
    print("\n".join(rows))
    print(f"fit rms log error {rms:.3f}; leave-one-out rms log error {loo_rms:.3f} (x{math.exp(loo_rms):.2f})")
    return {"params": params, "rms": rms, "loo_rms": loo_rms, "samples": len(samples)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgepack-estcheck-"))
    out.mkdir(parents=True, exist_ok=True)
    # A private cache: the fit here must not pick up (or overwrite) the user's calibrations.
    os.environ["EDGEPACK_CACHE"] = str(out / "cache")
    from devices.estimate import calibrate

    print("1. x86 family: calibration set measured on this machine", flush=True)
    items = calibration_set(out)
    run = measure(items, out / "run", args.runs)
    cal = calibrate([run], log=print)
    print(f"fitted on {cal['samples']} samples, rms log error {cal['rms_log_error']:.3f}")
    for f in cal["fit"]:
        print(f"  {f['what']}: measured {f['measured_ms']:.3f} ms, fitted {f['fitted_ms']:.3f} ms")
    print("\n2. arm family: MobileNets on the rpi4 profile (4 threads)", flush=True)
    arm = arm_check(out, cal["params"])
    print("\nefficiency.yaml:")
    for fam, params, rms, n in (("arm", arm["params"], arm["loo_rms"], arm["samples"]),
                                ("x86", cal["params"], cal["rms_log_error"], cal["samples"])):
        print(f"  {fam}: samples {n}, rms_log_error {rms:.3f}")
        print("    params: {" + ", ".join(f"{k}: {v:.4g}" for k, v in params.items()) + "}")


if __name__ == "__main__":
    main()
