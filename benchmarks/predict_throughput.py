"""`roadseg.serving.predict` at full resolution: old (full-size softmax) vs tiled post-processing.

Runs a base-16 U-Net (untrained weights: speed does not depend on them) at 96x160 on real
1280x720 BDD100k images, and in the same run measures the bare forward pass, the previous
post-processing (upsample all logits, softmax, max at full size) and the current one::

    .venv/bin/python benchmarks/predict_throughput.py --images ../shared/data/bdd100k-sample/images/10k/val
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from roadseg.models import build_model
from roadseg.serving import ModelSpec, Prediction, predict, preprocess


def old_predict(model, images, spec) -> list[Prediction]:
    """The pre-tiling post-processing, kept here as the baseline."""
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


def rate(fn, n_images: int, min_seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        done += n_images
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="../shared/data/bdd100k-sample/images/10k/val")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--size", default="96,160", help="training size H,W")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(Path(args.images).glob("*.jpg"))[: args.batch]
    if not files:
        raise SystemExit(f"no .jpg images under {args.images}")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    names = tuple(f"c{i}" for i in range(14))
    spec = ModelSpec(
        model_name="unet",
        num_classes=14,
        in_channels=3,
        base_channels=args.base,
        image_size=tuple(int(v) for v in args.size.split(",")),
        mean=(0.4,) * 3,
        std=(0.25,) * 3,
        class_names=("road", *names[1:]),
        colors=((0, 0, 0),) * 14,
    )
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=14, base_channels=args.base).eval()
    new, old = predict(model, images, spec), old_predict(model, images, spec)
    same = np.mean([np.mean(a.mask == b.mask) for a, b in zip(new, old, strict=True)])
    x = preprocess(images, spec)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    print(
        f"{len(images)} images {images[0].shape[1]}x{images[0].shape[0]}, base {args.base}, "
        f"model input {spec.image_size}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"masks identical on {same:.6%} of pixels; confidence "
        f"{new[0].confidence:.6f} vs {old[0].confidence:.6f}"
    )
    f_rate = rate(forward, len(images), args.seconds)
    o_rate = rate(lambda: old_predict(model, images, spec), len(images), args.seconds)
    n_rate = rate(lambda: predict(model, images, spec), len(images), args.seconds)
    print(f"bare forward   {f_rate:7.2f} img/s")
    print(f"old predict    {o_rate:7.2f} img/s")
    print(f"new predict    {n_rate:7.2f} img/s  ({n_rate / o_rate:.2f}x old)")


if __name__ == "__main__":
    main()
