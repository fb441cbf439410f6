"""The confidence's sample count: one sample per source cell (the old rule) vs about 2^14.

`roadseg.inference.upsampling.sampled_confidence` estimates the mean max softmax of the logits
upsampled to the image, by the midpoint rule on s x s blocks of output pixels. It used to take
one sample per source cell (at least 2^14), so its cost grew with the model's resolution; it now
takes about CONFIDENCE_SAMPLES = 2^14 at any size. On the real 1280x720 sample, for each model,
this measures in interleaved rounds the milliseconds per image of the confidence and of the whole
`postprocess` (mask, class shares, confidence) under both rules, and each rule's largest error
against the full-resolution mean (`F.interpolate`, softmax, max, mean)::

    .venv/bin/python benchmarks/confidence_sampling.py --models demo,effnet,base64 --rounds 3

One torch thread, as the service's request threads run it. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from bench_models import MODELS, sample_images

from roadseg.inference import upsampling
from roadseg.inference.predict import postprocess, preprocess
from roadseg.models.io import load_model

RULES = ("per source cell", "2^14")


def samples_for(rule: str, lg: torch.Tensor) -> int:
    """The CONFIDENCE_SAMPLES that makes `sampled_confidence` follow the rule for these logits:
    s = floor(sqrt(h w / n)); the old rule was n = max(h_in w_in, 2^14)."""
    return max(lg.shape[1] * lg.shape[2], 2**14) if rule == RULES[0] else 2**14


def full_resolution(lg: torch.Tensor, h: int, w: int) -> float:
    up = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return float(up.softmax(dim=0).amax(dim=0).double().mean())


def timed_ms(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(*item)
    return (time.perf_counter() - start) / len(items) * 1e3


def measure(name: str, images: list[np.ndarray], rounds: int) -> dict:
    model, spec, _ = load_model(MODELS[name]())
    model.eval()
    with torch.no_grad():
        logits = [model(preprocess([im], spec))[0].float() for im in images]
    items = [(lg, im.shape[0], im.shape[1]) for lg, im in zip(logits, images, strict=True)]
    truth = [full_resolution(*item) for item in items]
    row: dict = {"model": name, "logits": "x".join(map(str, spec.image_size))}
    times: dict[str, list[float]] = {}
    for rule in RULES:
        upsampling.CONFIDENCE_SAMPLES = samples_for(rule, logits[0])
        est = [upsampling.sampled_confidence(upsampling.Grid(*item)) for item in items]
        row[f"{rule} err"] = max(abs(a - b) for a, b in zip(est, truth, strict=True))
    for _ in range(rounds):  # interleaved: each rule sees the same load
        for rule in RULES:
            upsampling.CONFIDENCE_SAMPLES = samples_for(rule, logits[0])
            conf = timed_ms(lambda lg, h, w: upsampling.sampled_confidence(upsampling.Grid(lg, h, w)), items)  # fmt: skip
            post = timed_ms(lambda lg, h, w: postprocess(lg, h, w, spec), items)
            times.setdefault(f"{rule} conf", []).append(conf)
            times.setdefault(f"{rule} post", []).append(post)
    upsampling.CONFIDENCE_SAMPLES = 2**14
    return row | {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,effnet,base64", help="comma-separated: " + ", ".join(MODELS))  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=16, help="real 1280x720 images (of 16)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = sample_images()[: args.images]
    rows = [measure(name, images, args.rounds) for name in args.models.split(",")]
    print(f"\n{len(images)} real 1280x720 images, {args.rounds} interleaved rounds (medians), "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| model (logits) | confidence ms/img: per source cell → 2^14 | postprocess ms/img: "
          "per source cell → 2^14 | largest error vs full resolution: per source cell, 2^14 |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['model']}` ({r['logits']}) | {r['per source cell conf']:.1f} → {r['2^14 conf']:.1f} "
              f"| {r['per source cell post']:.1f} → {r['2^14 post']:.1f} "
              f"| {r['per source cell err']:.1e}, {r['2^14 err']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
