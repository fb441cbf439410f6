"""int8 vs float on real streets: the statically quantised model (`roadseg package --int8`,
roadseg.models.quantize) beside its float ONNX export and eager torch, in one run.

The model is real_sample.py's arm (b), the default architecture (`unet_effnet_lite0`, ImageNet
encoder, base 16, trained at 288x512) trained on the 12 real training images of the BDD100k
sample for `--budget` CPU seconds of one torch thread (`real_sample.train_for`; cached under
~/.cache/roadseg-bench). int8 is calibrated on those 12 training images exactly as packaging
does (`roadseg.release.int8.calibration_inputs`: the service's preprocessing). Reported:

- mIoU and pixel accuracy on the 4 real validation images at full 1280x720 (roadseg evaluate's
  code) for float ONNX and int8, the drop, and the gate's decision (`int8_gate`: drop < 0.01);
- mask agreement of int8 with float ONNX on those images (share of identical pixels);
- forward img/s (preprocess + network on one 1280x720 image) of torch, ONNX float and ONNX int8
  in interleaved rounds (`predict_throughput.interleaved_rates`), with the load average; also for
  the plain U-Net of the demo's size (`bench_models.demo_random_checkpoint`, speed only: random).

    .venv/bin/python benchmarks/int8_accuracy.py                 # ~2 min once trained
    .venv/bin/python benchmarks/int8_accuracy.py --budget 240    # training: ~4 min the first time
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_models, predict_throughput, real_sample (and the repo)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_models import CACHE, demo_random_checkpoint  # noqa: E402
from predict_throughput import interleaved_rates  # noqa: E402
from real_sample import ARMS, SAMPLE, TRAIN_SIZE, train_for  # noqa: E402

from roadseg.config import load_params  # noqa: E402
from roadseg.data.bdd100k import read_image  # noqa: E402
from roadseg.data.dataset import list_split  # noqa: E402
from roadseg.evaluate.segmentation import evaluate_model  # noqa: E402
from roadseg.inference.predict import predict, preprocess  # noqa: E402
from roadseg.models.io import load_model  # noqa: E402
from roadseg.models.onnx import export_onnx  # noqa: E402
from roadseg.models.quantize import ONNX_INT8_FILE, int8_gate, quantize_int8  # noqa: E402
from roadseg.release.int8 import calibration_inputs  # noqa: E402
from roadseg.serve.backends import OnnxRuntimeModel  # noqa: E402

BUDGET = 240.0  # training CPU seconds (one torch thread), as real_sample.py's arms count them


def trained_checkpoint(budget: float = BUDGET, seed: int = 0) -> Path:
    """real_sample.py's arm (b) trained on the 12 real training images for `budget` CPU
    seconds, cached."""
    import shutil

    size = TRAIN_SIZE.strip("[]").replace(",", "x")
    path = CACHE / f"int8-effnet16-{size}-{budget:g}s-{seed}.pt"
    if path.is_file():
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time is work done, as in real_sample.py
    out = CACHE / f"int8-train-{os.getpid()}"
    overrides = [f"train.image_size={TRAIN_SIZE}", *ARMS["b"][1], f"train.seed={seed}"]
    last, epochs, seconds = train_for(overrides, SAMPLE, out, budget)
    print(f"trained {epochs} epochs in {seconds:.0f} CPU s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(last, path)
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(threads)
    return path


def variants(ckpt: Path, tmp: Path, threads: int) -> tuple[dict, object, dict]:
    """{torch, onnx, int8} networks of one checkpoint (int8 calibrated as packaging does), the
    spec, and how the int8 file was made (+ seconds)."""
    params = load_params()
    model, spec, _ = load_model(ckpt)
    export_onnx(model, spec, tmp / "model.onnx")
    start = time.perf_counter()
    labels = quantize_int8(tmp / "model.onnx", tmp / ONNX_INT8_FILE,
                           calibration_inputs(SAMPLE, params, spec))  # fmt: skip
    labels["quantise_s"] = f"{time.perf_counter() - start:.1f}"
    nets = {"torch": model.eval(), "onnx": OnnxRuntimeModel(tmp / "model.onnx", threads=threads),
            "int8": OnnxRuntimeModel(tmp / ONNX_INT8_FILE, threads=threads)}  # fmt: skip
    return nets, spec, labels


def accuracy(nets: dict, spec, images: list[np.ndarray]) -> dict:
    """Val scores of float ONNX and int8 (and torch), the gate, and int8's mask agreement."""
    params = load_params()
    scores = {k: evaluate_model(net, spec, SAMPLE, params, "val", device="cpu", progress=False)
              for k, net in nets.items()}  # fmt: skip
    want = predict(nets["onnx"], images, spec, device="cpu")
    got = predict(nets["int8"], images, spec, device="cpu")
    agree = [float((a.mask == b.mask).mean()) for a, b in zip(want, got, strict=True)]
    gate = int8_gate(scores["onnx"]["miou"], scores["int8"]["miou"])
    return {"scores": scores, "agreement": agree, "gate": gate}


def speed(nets: dict, spec, images: list[np.ndarray], args: argparse.Namespace) -> dict:
    """forward img/s (preprocess + network, one 1280x720 image a call), interleaved rounds."""

    def forward(net, batch) -> None:
        with torch.no_grad():
            net(preprocess(batch, spec))

    fns = {k: (lambda b, net=net: forward(net, b)) for k, net in nets.items()}
    batches = [[im] for im in images]
    for fn in fns.values():
        fn(batches[0])  # warm-up (ORT's arena, torch's allocator)
    return interleaved_rates(fns, batches, args)


def report(acc: dict, rates: dict, demo: dict | None, labels: dict, args) -> str:
    s, gate = acc["scores"], acc["gate"]
    load = " ".join(f"{x:.2f}" for x in rates["load_avg"])
    lines = [
        f"Measured with `.venv/bin/python benchmarks/int8_accuracy.py --budget {args.budget:g} "
        f"--rounds {args.rounds} --seconds {args.seconds:g} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}). Model: unet_effnet_lite0 (base 16, 288x512), trained "
        f"for a {args.budget:g} CPU s budget on the 12 real training images; int8: {labels['int8_scheme']}, "
        f"{labels['int8_calibration']} ({labels['quantise_s']} s to quantise).",
        "",
        "| 4 real val images, 1280x720 | mIoU | pixel acc. |",
        "|---|---:|---:|",
        *(
            f"| {k} | {s[k]['miou']:.4f} | {s[k]['pixel_accuracy']:.4f} |"
            for k in ("torch", "onnx", "int8")
        ),
        "",
        f"Drop (float ONNX − int8): {s['onnx']['miou'] - s['int8']['miou']:.4f} mIoU; gate "
        f"(< 0.01): **{'shipped' if gate.ship else 'rejected'}** ({gate.reason}). int8 masks "
        f"identical to float ONNX on {np.mean(acc['agreement']):.2%} of pixels (per image "
        + ", ".join(f"{a:.2%}" for a in acc["agreement"])
        + ").",
        "",
        f"| forward img/s, 1280x720 input, {args.threads} threads | torch | ONNX float | ONNX int8 "
        "| int8 / float | load avg |",
        "|---|---:|---:|---:|---:|---|",
        _speed_row("unet_effnet_lite0 base 16 (288x512)", rates, load),
    ]
    if demo is not None:
        dload = " ".join(f"{x:.2f}" for x in demo["load_avg"])
        lines.append(_speed_row("plain U-Net base 16 (96x160), random", demo, dload))
    return "\n".join(lines) + "\n"


def _speed_row(name: str, r: dict, load: str) -> str:
    t, f, q = r["torch_img_s"], r["onnx_img_s"], r["int8_img_s"]
    return f"| {name} | {t:.2f} | {f:.2f} | {q:.2f} | {q / f:.2f}x | {load} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=BUDGET, help="training CPU s (cached)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo-size U-Net's speed")
    ap.add_argument("--out", type=Path, default=HERE / "int8_accuracy.md")
    args = ap.parse_args()
    ckpt = trained_checkpoint(args.budget)
    torch.set_num_threads(args.threads)
    images = [read_image(s.image) for s in list_split(SAMPLE, load_params(), "val")]
    with tempfile.TemporaryDirectory() as tmp:
        nets, spec, labels = variants(ckpt, Path(tmp), args.threads)
        acc = accuracy(nets, spec, images)
        print(acc["gate"].reason, acc["agreement"], flush=True)
        rates = speed(nets, spec, images, args)
        print(rates, flush=True)
    demo = None
    if not args.no_demo:
        with tempfile.TemporaryDirectory() as tmp:
            nets, spec, _ = variants(demo_random_checkpoint(), Path(tmp), args.threads)
            demo = speed(nets, spec, images, args)
    text = report(acc, rates, demo, labels, args)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
