"""Live-stream throughput: 1 and 4 concurrent `GET /stream` WebSockets vs the bare model.

Starts `bentoml serve` with an untrained base-4 U-Net checkpoint (or `--model-uri`), then drives
each level for `--duration` seconds: every stream sends the real 1280x720 BDD100k sample frames
(JPEG, as the camera/client sends them) at `--source-fps`, as a camera would, and the service
answers the newest frame it can (the rest come back as `dropped`). In the same run it measures the
bare in-process `predict` rate on the same decoded frames: one frame at a time (the target for one
stream) and batches of 4 (the target for 4 streams)::

    .venv/bin/python benchmarks/stream_throughput.py --duration 20 --out reports/stream_bench.json
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

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/bdd100k-sample"


def sample_frames(root: Path) -> list[np.ndarray]:
    paths = sorted((root / "images").rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no sample images under {root} (set ROADSEG_SAMPLE_DIR)")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def bare_rate(model_uri: str, frames: list[np.ndarray], batch: int, duration: float) -> float:
    """Frames/s of the in-process forward (preprocess + model + postprocess) in batches."""
    from roadseg.batching import create_engine

    engine, _ = create_engine(model_uri, max_batch_size=batch)
    engine.predict_now(frames[:batch])  # warm-up
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        engine.predict_now([frames[(i + k) % len(frames)] for k in range(batch)])
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - start)


async def drive(url: str, frames: list[np.ndarray], streams: int, fps: float, duration: float):
    from roadseg.stream_client import stream_frames

    n = max(1, int(fps * duration))
    clip = [frames[i % len(frames)] for i in range(n)]
    start = time.perf_counter()
    results = await asyncio.gather(
        *[stream_frames(url, clip, fps, fmt="mask", api_key=None) for _ in range(streams)]
    )
    wall = time.perf_counter() - start
    stats = [s for s, _ in results]
    lat = [x for s in stats for x in s.latencies_ms]
    sent = sum(s.sent for s in stats)
    return {
        "streams": streams,
        "frames_per_s": round(sum(s.answered for s in stats) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "dropped_share": round(sum(s.dropped for s in stats) / sent, 3),
        "errors": sum(s.errors for s in stats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-uri", default=None, help="default: untrained base-4 U-Net")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    ap.add_argument("--source-fps", type=float, default=30.0, help="frames/s each stream sends")
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from roadseg.launcher import running_service

    frames = sample_frames(Path(os.environ.get("ROADSEG_SAMPLE_DIR") or SAMPLE))
    tmp = Path(tempfile.mkdtemp(prefix="roadseg-stream-bench-"))
    uri = args.model_uri or str(untrained_checkpoint(tmp))
    levels = [int(x) for x in args.streams.split(",")]
    bare = {b: round(bare_rate(uri, frames, b, args.duration), 2) for b in sorted({1, *levels})}
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    # the service's own max_fps must not be the limit being measured
    (tmp / "params.yaml").write_text(text.replace("max_fps: 30", "max_fps: 1000"))
    env = {"ROADSEG_MODEL_URI": uri, "ROADSEG_PARAMS": str(tmp / "params.yaml"),
           "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"), "BENTOML_HOME": str(tmp / "bentoml"),
           "ROADSEG_API_KEY": ""}  # fmt: skip
    rows = []
    with running_service(env, log_path=tmp / "serve.log") as url:
        ws = url.replace("http://", "ws://") + "/stream"
        asyncio.run(drive(ws, frames, 1, args.source_fps, 2.0))  # warm-up
        for n in levels:
            row = asyncio.run(drive(ws, frames, n, args.source_fps, args.duration))
            rows.append(row)
    # bare again after the service stopped: a busy shared machine skews a single measurement
    after = {b: round(bare_rate(uri, frames, b, args.duration), 2) for b in bare}
    for row in rows:
        n = row["streams"]
        row["bare_frames_per_s"] = [bare[n], after[n]]
        row["share_of_bare"] = round(row["frames_per_s"] / max(bare[n], after[n]), 3)
        print(json.dumps(row))
    report = {
        "bare_before": bare,
        "bare_after": after,
        "streams": rows,
        "frame_size": list(frames[0].shape[:2]),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


def untrained_checkpoint(tmp: Path) -> Path:
    import torch

    from roadseg.config import load_params
    from roadseg.modelio import save_checkpoint
    from roadseg.models import build_model
    from roadseg.serving import ModelSpec

    params = load_params(overrides=["model.base_channels=4"])
    spec = ModelSpec.from_params(params, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, num_classes=spec.num_classes, base_channels=4)
    save_checkpoint(tmp / "model.pt", {"model": model.state_dict(), "spec": spec.to_dict()})
    return tmp / "model.pt"


if __name__ == "__main__":
    main()
