"""Live-stream throughput: 1 and 4 concurrent `GET /stream` WebSockets vs bare `predict`.

Serves the demo model (`bench_models.demo_checkpoint`: U-Net base 16 at 96x160, briefly trained;
or `--model-uri`) with `stream.max_fps` raised so that the service's own frame-rate limit is not
what is measured. Each stream sends the real 1280x720 sample JPEGs (pre-encoded: the bytes on
disk, so the client costs almost no CPU) at a steady rate, as a camera would: by default the
streams together offer 1.25x what bare `predict` takes in the same run (`--source-fps` sets a
camera rate instead, e.g. 30: every offered frame costs the service its receive, so a flood
measures that too); the service answers the newest waiting frame and reports the rest `dropped`.
Before each level, with the service idle, it measures the bare in-process `predict` rate with
the same torch thread count: one frame per call (the target for one stream) and batches of 4
(the target for 4 streams), and again for half as long right after the streams (the reference
is the mean of the two: on a shared machine the load drifts within a round).
Reported per level: frames/s served, p50/p95 latency (send to answer), dropped share, errors,
and served / bare::

    .venv/bin/python benchmarks/stream_throughput.py            # ~7 min: 3 rounds x 20 s
    .venv/bin/python benchmarks/stream_throughput.py --quick    # 1 round x 8 s
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
from bench_models import demo_checkpoint, sample_images, sample_paths


def bare_rate(engine, frames: list[np.ndarray], batch: int, seconds: float) -> float:
    """Frames/s of in-process `predict` (preprocess + forward + post-processing), `batch` a call."""
    done, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.predict_now([frames[(k + i) % len(frames)] for i in range(batch)])
        done, k = done + batch, k + batch
    return done / (time.perf_counter() - start)


async def one_stream(url: str, payloads: list[bytes], fps: float, seconds: float) -> dict:
    """Send frames at `fps` for `seconds`, then wait for the last answer (never dropped). A
    connection the protocol breaks is counted in `broken` and replaced by a new one."""
    stats = {"sent": 0, "answered": 0, "dropped": 0, "errors": 0, "broken": 0, "latencies_ms": []}
    start = time.perf_counter()
    while (left := start + seconds - time.perf_counter()) > 1.0:
        try:
            await _connection(url, payloads, fps, left, stats)
        except (OSError, TimeoutError, ConnectionError) as e:
            stats["broken"] += 1
            print(f"stream connection failed: {type(e).__name__}: {e}")
    stats["seconds"] = time.perf_counter() - start
    return stats


async def _connection(url: str, payloads: list[bytes], fps: float, seconds: float, stats) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    n = max(1, int(fps * seconds))
    sent_at: dict[int, float] = {}
    # no permessage-deflate: JPEG/PNG do not compress, deflating them costs both sides CPU
    opts = {"subprotocols": ["roadseg"], "max_size": None, "compression": None}
    try:
        async with connect(f"{url}?format=mask", **opts) as ws:

            async def receive() -> None:
                while True:
                    head = json.loads(await ws.recv())
                    stats["dropped"] += len(head.get("dropped", []))
                    if "error" in head:
                        stats["errors"] += 1
                    else:
                        await ws.recv()  # the PNG
                        stats["answered"] += 1
                        done = time.perf_counter() - sent_at[head["frame"]]
                        stats["latencies_ms"].append(1000 * done)
                    if head["frame"] == n - 1:
                        return

            receiver = asyncio.create_task(receive())
            start = time.perf_counter()
            for i in range(n):
                await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))
                if receiver.done():
                    break
                sent_at[i] = time.perf_counter()
                await ws.send(payloads[i % len(payloads)])
                stats["sent"] += 1
            await asyncio.wait_for(receiver, 120)
    except ConnectionClosed as e:
        raise ConnectionError(str(e)) from e


async def drive(url: str, payloads: list[bytes], streams: int, fps: float, seconds: float) -> dict:
    runs = await asyncio.gather(*[one_stream(url, payloads, fps, seconds) for _ in range(streams)])
    lat = [x for r in runs for x in r["latencies_ms"]] or [float("nan")]
    return {
        "streams": streams,
        "frames_per_s": sum(r["answered"] / r["seconds"] for r in runs),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "dropped_share": sum(r["dropped"] for r in runs) / sum(r["sent"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "broken_connections": sum(r["broken"] for r in runs),
    }


def run(args: argparse.Namespace) -> list[dict]:
    from roadseg.serve.engine import create_engine
    from roadseg.testing import params_with, running_service

    frames = sample_images()
    payloads = [p.read_bytes() for p in sample_paths()]
    uri = args.model_uri or str(demo_checkpoint())
    tmp = Path(tempfile.mkdtemp(prefix="roadseg-stream-bench-"))
    params = params_with(tmp / "params.yaml", {"max_fps: 30": "max_fps: 1000"})
    env = {"ROADSEG_MODEL_URI": uri, "ROADSEG_PARAMS": str(params), "ROADSEG_API_KEY": None,
           "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"), "BENTOML_HOME": str(tmp / "bentoml")}  # fmt: skip
    levels = [int(x) for x in args.streams.split(",")]
    if args.threads:  # the same intra-op thread count in both processes
        import torch

        torch.set_num_threads(args.threads)
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    engine, _ = create_engine(uri, max_batch_size=max(levels))
    rows: dict[int, list[dict]] = {n: [] for n in levels}
    with running_service(env, log_path=tmp / "serve.log") as url:
        ws = url.replace("http://", "ws://") + "/stream"
        asyncio.run(drive(ws, payloads, 1, 10.0, 2.0))  # warm-up
        for _ in range(args.rounds):
            for n in levels:
                bare = bare_rate(engine, frames, n, args.duration)  # the service is idle now
                # auto: offer 25% more frames than bare predict can take, spread over the streams
                fps = args.source_fps or 1.25 * bare / n
                row = asyncio.run(drive(ws, payloads, n, fps, args.duration))
                # bare again right after: on a shared machine the load drifts within a round,
                # so the reference is the mean of the rates measured just before and after
                after = bare_rate(engine, frames, n, args.duration / 2)
                row |= {"bare_before": bare, "bare_after": after, "source_fps": fps}
                bare = (bare + after) / 2
                row |= {"bare_batch": n, "bare_frames_per_s": bare}
                row["load_avg"] = os.getloadavg()
                row["share_of_bare"] = row["frames_per_s"] / bare
                rows[n].append(row)
                print(json.dumps(row))
    out = []
    for rounds in rows.values():  # the median round of each level, by its share of bare
        rounds.sort(key=lambda x: x["share_of_bare"])
        shares = [round(x["share_of_bare"], 3) for x in rounds]
        broken = sum(x["broken_connections"] for x in rounds)
        out.append(rounds[len(rounds) // 2] | {"shares_all_rounds": shares, "broken_all": broken})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-uri", default=None, help="default: the trained demo checkpoint")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument(
        "--source-fps",
        type=float,
        default=0.0,
        help="frames/s each stream sends (0: 1.25 x the bare rate of the level / streams)",
    )
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--quick", action="store_true", help="1 round x 8 s")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in the service (0: default)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 8.0
    rows = run(args)
    print(
        "\n| streams | offered frames/s | served frames/s | bare predict frames/s (batch) "
        "| served / bare | p50 ms | p95 ms | dropped | errors | broken connections (all rounds) "
        "| all rounds' shares | load avg |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['source_fps'] * r['streams']:.1f} | {r['frames_per_s']:.2f} | "
            f"{r['bare_frames_per_s']:.2f} "
            f"({r['bare_batch']}) | {r['share_of_bare']:.0%} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['dropped_share']:.0%} | {r['errors']} | {r['broken_all']} | "
            f"{', '.join(f'{x:.0%}' for x in r['shares_all_rounds'])} | "
            f"{' '.join(f'{x:.2f}' for x in r['load_avg'])} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
