"""`roadseg.inference.predict.predict` at 1280x720 vs the bare forward pass and the old post-processing.

On the real BDD100k sample (1280x720), for the demo model (U-Net base 16 at 96x160, briefly
trained: `bench_models.demo_checkpoint`) and the base-64 reference model (31 M parameters at
368x640), measures in interleaved rounds (so load from other jobs hits all three alike):

- `forward`: preprocess + the model's forward pass only (the ceiling);
- `old`: the original post-processing, kept here as the baseline: upsample all logits to full
  size, softmax, max (and the road probability);
- `predict`: `roadseg.inference.predict.predict` (mixed-cell argmax, sampled confidence, lazy road map).

It first checks that the masks are identical (argmax ties aside) and prints the confidence error.
Medians over rounds; the load average is printed with each table::

    .venv/bin/python benchmarks/predict_throughput.py                 # both models, ~6-15 min
    .venv/bin/python benchmarks/predict_throughput.py --models demo   # ~2 min
    .venv/bin/python benchmarks/predict_throughput.py --quick         # 3 s x 1 round

The demo model is trained on first use (~6 min on a loaded 2-core machine, then cached); the
base-64 model takes seconds per image on a CPU, so its rounds last at least one batch each.

`--backend torch,onnxruntime` compares the serving backends instead (`roadseg.serve.backends`):
for each model, `forward` and `predict` on each backend in interleaved rounds, the masks'
agreement with torch's, the network's GFLOP per image and the GFLOP/s each backend achieves,
beside a plain float32 matmul's on the same cores::

    .venv/bin/python benchmarks/predict_throughput.py --backend torch,onnxruntime \
        --models demo-random,base64,effnet --rounds 2 --seconds 8 --check-images 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_models import MODELS, mixed_cell_share, sample_images

from roadseg.inference.predict import Prediction, predict, preprocess
from roadseg.models.io import load_model


def interleaved_rates(fns: dict, batches: list, args: argparse.Namespace) -> dict:
    """img/s of each function, rounds interleaved (each sees the same machine load): the median
    per function, every round, and the load average."""
    rounds: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            rounds[k].append(rate(fn, batches, args.seconds))
    medians = {f"{k}_img_s": float(np.median(v)) for k, v in rounds.items()}
    return medians | {"rounds": rounds, "load_avg": os.getloadavg()}


def old_predict(model, images, spec) -> list[Prediction]:
    """The original post-processing (full-size upsample + softmax + max), the baseline."""
    x = preprocess(images, spec)
    with torch.no_grad():
        logits = model(x).float()
    out = []
    for im, lg in zip(images, logits, strict=True):
        up = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
        probs = up.softmax(dim=0)
        conf, mask = probs.max(dim=0)
        road = probs[0].mul(255.0).round_().to(torch.uint8).numpy()
        out.append(Prediction(mask.to(torch.uint8).numpy(), float(conf.mean()), {}, road))
    return out


def rate(fn, batches: list[list[np.ndarray]], seconds: float) -> float:
    done, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[k % len(batches)]
        fn(batch)
        done, k = done + len(batch), k + 1
    return done / (time.perf_counter() - start)


def check(model, spec, images) -> dict:
    """Masks of predict vs the baseline on every image; confidence and road-map differences."""
    new, old = predict(model, images, spec), old_predict(model, images, spec)
    pairs = list(zip(new, old, strict=True))
    return {
        "masks_identical_share": float(np.mean([np.mean(a.mask == b.mask) for a, b in pairs])),
        "confidence_max_abs_err": max(abs(a.confidence - b.confidence) for a, b in pairs),
        "road_max_abs_diff": max(
            int(np.abs(a.road_probability.astype(int) - b.road_probability).max()) for a, b in pairs
        ),
        "mixed_cell_share": mixed_cell_share(model, spec, images),
    }


def bench_model(name: str, path: Path, images, args) -> dict:
    model, spec, _ = load_model(path)
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    row = {"model": name, "input": list(spec.image_size), "batch": args.batch}
    row |= check(model, spec, images[: args.check_images])

    def forward(batch) -> None:
        with torch.no_grad():
            model(preprocess(batch, spec))

    fns = {
        "forward": forward,
        "old": lambda b: old_predict(model, b, spec),
        "predict": lambda b: predict(model, b, spec, batch_size=args.batch),
    }
    for fn in fns.values():
        fn(batches[0])  # warm-up
    return row | interleaved_rates(fns, batches, args)


def gflop_per_image(model, spec) -> float:
    """Forward GFLOP of one image at the model's input size (torch's FLOP counter: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, spec.in_channels, *spec.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def matmul_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """A plain float32 matmul's GFLOP/s on this process's threads: the hardware's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - start) / 1e9


def bench_backends(name: str, path: Path, images, args) -> dict:
    """forward and predict img/s of each backend on one model, interleaved rounds."""
    from roadseg.serve.backends import load_backend

    model, spec, _ = load_model(path)
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    row = {"model": name, "architecture": spec.model_name, "input": list(spec.image_size),
           "batch": args.batch, "gflop_per_image": gflop_per_image(model, spec)}  # fmt: skip
    nets, fns = {}, {}
    for backend in args.backends:
        start = time.perf_counter()
        nets[backend] = load_backend(backend, model, spec, threads=args.threads or None)
        row[f"{backend}_load_s"] = time.perf_counter() - start  # export + session for onnxruntime

    def forward(net, batch) -> None:
        with torch.no_grad():
            net(preprocess(batch, spec))

    for backend, net in nets.items():
        fns[f"{backend}_forward"] = lambda b, net=net: forward(net, b)
        fns[f"{backend}_predict"] = lambda b, net=net: predict(
            net, b, spec, device="cpu", batch_size=args.batch
        )
    checked = images[: args.check_images]
    want = predict(model, checked, spec, device="cpu")
    row["mixed_cell_share"] = mixed_cell_share(model, spec, checked)
    for backend, net in nets.items():
        got = predict(net, checked, spec, device="cpu")
        pairs = list(zip(want, got, strict=True))
        row[f"{backend}_identical_px"] = float(
            np.mean([np.mean(a.mask == b.mask) for a, b in pairs])
        )
        row[f"{backend}_conf_err"] = max(abs(a.confidence - b.confidence) for a, b in pairs)
    for fn in fns.values():
        fn(batches[0])  # warm-up (ONNX Runtime's arena, torch's allocator)
    return row | interleaved_rates(fns, batches, args)


def print_backend_table(rows: list[dict], backends: list[str], matmul: float) -> None:
    base, other = backends[0], backends[1:]
    head = "| model (input), 1280×720 | GFLOP/img |"
    for b in backends:
        head += f" {b} forward img/s | {b} predict img/s | {b} GFLOP/s |"
    for b in other:
        head += f" {b}/{base} forward | {b}/{base} predict | {b} identical px |"
    print(f"\nplain float32 matmul: {matmul:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    print("\n" + head + " load avg |")
    print("|---|---:|" + "---:|" * (3 * len(backends) + 3 * len(other)) + "---|")
    for r in rows:
        h, w = r["input"]
        line = f"| {r['model']}: {r['architecture']} ({h}x{w}) | {r['gflop_per_image']:.1f} |"
        for b in backends:
            f, p = r[f"{b}_forward_img_s"], r[f"{b}_predict_img_s"]
            line += f" {f:.2f} | {p:.2f} | {f * r['gflop_per_image']:.0f} |"
        for b in other:
            fr = r[f"{b}_forward_img_s"] / r[f"{base}_forward_img_s"]
            pr = r[f"{b}_predict_img_s"] / r[f"{base}_predict_img_s"]
            line += f" {fr:.2f}x | {pr:.2f}x | {r[f'{b}_identical_px']:.5%} |"
        print(line + f" {' '.join(f'{x:.2f}' for x in r['load_avg'])} |")


def print_table(rows: list[dict]) -> None:
    print(
        "\n| model (input) | forward img/s | old predict img/s | predict img/s | predict/old "
        "| predict/forward | identical mask px | conf err | mixed cells | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        h, w = r["input"]
        print(
            f"| {r['model']} ({h}x{w}) | {r['forward_img_s']:.2f} | {r['old_img_s']:.2f} | "
            f"{r['predict_img_s']:.2f} | {r['predict_img_s'] / r['old_img_s']:.2f}x | "
            f"{r['predict_img_s'] / r['forward_img_s']:.0%} | {r['masks_identical_share']:.6%} | "
            f"{r['confidence_max_abs_err']:.1e} | {r['mixed_cell_share']:.1%} | "
            f"{' '.join(f'{x:.2f}' for x in r['load_avg'])} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="images per predict call")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--check-images", type=int, default=16, help="images compared with old")
    ap.add_argument("--quick", action="store_true", help="3 s x 1 round, 4 images compared")
    ap.add_argument("--models", default="demo,base64",
                    help="comma-separated: demo, demo-random, demo-effnet, base64, effnet")  # fmt: skip
    ap.add_argument("--backend", default="torch",
                    help="torch (predict vs the old post-processing) or backends to compare, "
                    "e.g. torch,onnxruntime (the first is the reference)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.check_images = 3.0, 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    images = sample_images()
    print(
        f"{len(images)} real images {images[0].shape[1]}x{images[0].shape[0]}, torch threads "
        f"{torch.get_num_threads()}, {args.rounds} x {args.seconds:.0f} s per measurement"
    )
    args.backends = args.backend.split(",")
    compare = args.backends != ["torch"]
    rows = []
    for name in args.models.split(","):
        bench = bench_backends if compare else bench_model
        rows.append(bench(name, MODELS[name](), images, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds"}))
    if compare:
        print_backend_table(rows, args.backends, matmul_gflops())
    else:
        print_table(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
