"""Which adaptive batcher serves concurrent single-image requests faster: ours or BentoML's?

The same model and real 1280x720 images, in one process and one run:

- `queue`: `roadseg.serve.engine.InferenceEngine.predict` (what every route uses: resizing and
  full-resolution post-processing in the request's worker threads, the forward pass batched);
- `cork`:  `predict_now` (all three steps) behind
  `bentoml._internal.marshal.dispatcher.CorkDispatcher`, the dispatcher behind
  `@bentoml.api(batchable=True, max_batch_size=…, max_latency_ms=…)`, with `serve.batch_size`
  and `--cork-max-latency-ms` (its latency budget: it refuses work it predicts would exceed it);
- `bare`:  `predict_now` on full batches, no queue at all (the ceiling).

`clients` coroutines each send one image at a time for `--duration` seconds::

    .venv/bin/python benchmarks/batching_compare.py --clients 16 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("ROADSEG_SAMPLE_DIR", REPO.parent / "shared/data/bdd100k-sample"))


def real_images(n: int) -> list[np.ndarray]:
    files = sorted((SAMPLE / "images/10k").rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no sample images under {SAMPLE} (set ROADSEG_SAMPLE_DIR)")
    return [np.asarray(Image.open(f).convert("RGB")) for f in (files * n)[:n]]


def demo_model(base: int, size: tuple[int, int]) -> Path:
    """A U-Net like the demo's (untrained weights: the cost is the same)."""
    from roadseg.testing import save_random_checkpoint

    path = Path(tempfile.mkdtemp(prefix="roadseg-bench-")) / "model.pt"
    save_random_checkpoint(
        path, base_channels=base, overrides=[f"train.image_size=[{size[0]},{size[1]}]"]
    )
    return path


async def drive(call, images: list[np.ndarray], clients: int, duration: float) -> float:
    done = 0
    stop = time.perf_counter() + duration

    async def client(i: int) -> None:
        nonlocal done
        k = i
        while time.perf_counter() < stop:
            await call(images[k % len(images)])
            done += 1
            k += clients

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - start)


async def run(args: argparse.Namespace) -> dict:
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    from roadseg.config import load_params
    from roadseg.serve.engine import create_engine

    serve = load_params().serve
    images = real_images(32)
    engine, _ = create_engine(
        str(demo_model(args.base, tuple(args.size))), max_batch_size=serve.batch_size
    )
    out: dict = {
        "clients": args.clients,
        "batch_size": serve.batch_size,
        "image": list(images[0].shape),
    }

    async def queue_call(im: np.ndarray):
        return (await engine.predict([im]))[0]

    cork = CorkDispatcher(
        max_latency_in_ms=args.cork_max_latency_ms,
        max_batch_size=serve.batch_size,
        fallback=lambda: None,
        get_batch_size=lambda x: 1,
    )
    cork_call = cork(lambda batch: engine.predict_now(list(batch)))

    def bare(duration: float) -> float:
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < duration:
            k = done % 24
            engine.predict_now(images[k : k + serve.batch_size])
            done += serve.batch_size
        return done / (time.perf_counter() - start)

    # Interleaved rounds, so load from other jobs hits all three alike; medians reported.
    rounds: dict[str, list[float]] = {"bare": [], "queue": [], "cork": []}
    for _ in range(args.rounds):
        rounds["bare"].append(bare(args.duration))
        rounds["queue"].append(await drive(queue_call, images, args.clients, args.duration))
        rounds["cork"].append(await drive(cork_call, images, args.clients, args.duration))
    out["rounds"] = rounds
    for k, v in rounds.items():
        out[f"{k}_img_s"] = float(np.median(v))
    out["queue_vs_bare"] = out["queue_img_s"] / out["bare_img_s"]
    out["cork_vs_bare"] = out["cork_img_s"] / out["bare_img_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=int, default=16, help="U-Net base channels (16: demo, 64: 31 M)")
    ap.add_argument("--size", type=int, nargs=2, default=[96, 160], help="network input H W")
    ap.add_argument("--cork-max-latency-ms", type=int, default=2000, help="BentoML's budget")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
