"""What the shadow challenger costs the champion: its latency with shadow off vs share 1.0.

The champion is the service's engine (`roadseg.serve.engine.create_engine`: the batching queue,
with `serve.model_process` as the service runs it) and the challenger a second copy of the same
model in a `roadseg.serve.shadow.ShadowRunner` (queue `serve.shadow.queue`, its own thread), fed
by the after-prediction hook exactly as in the service. C closed-loop clients send one real
1280x720 sample image per request to `engine.predict`; a request's latency is from the call to
its masks (prepare, queue, forward, post-processing and the hook). The two arms alternate in
interleaved rounds in one run (each sees the same machine load); before each arm the challenger's
queue is drained, so an arm never pays for the other's images. Pooled over rounds: p50, p99,
img/s per arm; the challenger's images compared and dropped during the shadow arm, and their
agreement with the champion (the same weights: ~1.0)::

    .venv/bin/python benchmarks/shadow_overhead.py                      # ~4 min
    .venv/bin/python benchmarks/shadow_overhead.py --quick              # ~40 s
    .venv/bin/python benchmarks/shadow_overhead.py --clients 1,4 --rounds 4 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from bench_models import demo_checkpoint, demo_random_checkpoint, sample_images

from roadseg.config import load_params
from roadseg.serve.engine import create_engine
from roadseg.serve.shadow import ShadowRunner

MODELS = {"demo-random": demo_random_checkpoint, "demo": demo_checkpoint}


async def closed_loop(engine, images, clients: int, seconds: float, then) -> list[float]:
    """Per-request latencies (s) of `clients` clients sending one image each, back to back."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            image = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            await engine.predict([image], then=then)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies


def drain(runner: ShadowRunner, timeout: float = 60.0) -> None:
    """Wait until the challenger has nothing queued and nothing in hand."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = runner.stats.images
        if runner._queue.empty():
            time.sleep(0.3)
            if runner._queue.empty() and runner.stats.images == before:
                return
        time.sleep(0.05)


def summary(latencies: list[float], seconds: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "img_s": len(ms) / seconds}  # fmt: skip


async def measure(args: argparse.Namespace) -> list[dict]:
    params = load_params()
    ckpt = str(MODELS[args.model]())
    images = sample_images()
    engine, _ = create_engine(ckpt, backend="torch", max_batch_size=params.serve.batch_size,
                                 model_process=args.model_process, warm_up=True)  # fmt: skip

    def load():
        return create_engine(ckpt, backend="torch", max_batch_size=params.serve.batch_size,
                             warm_up=True)  # fmt: skip

    runner = ShadowRunner(load, share=args.share, uri=ckpt, champion={"model_uri": "champion"},
                          class_names=engine.spec.class_names, queue_size=args.queue,
                          max_batch=params.serve.batch_size).start()  # fmt: skip
    assert runner.wait_loaded(300) == "on", runner.reason
    await closed_loop(engine, images, 2, 2.0, runner.offer)  # warm both paths
    drain(runner)
    rows = []
    for clients in args.clients:
        pooled: dict[str, list[float]] = {"off": [], "shadow": []}
        shadowed = dropped = 0
        for _ in range(args.rounds):
            for arm in ("off", "shadow"):
                drain(runner)
                before = (runner.stats.images, runner.stats.dropped)
                hook = runner.offer if arm == "shadow" else None
                pooled[arm] += await closed_loop(engine, images, clients, args.seconds, hook)
                if arm == "shadow":
                    drain(runner)
                    shadowed += runner.stats.images - before[0]
                    dropped += runner.stats.dropped - before[1]
        total = args.seconds * args.rounds
        off, on = summary(pooled["off"], total), summary(pooled["shadow"], total)
        row = {"model": args.model, "clients": clients, "share": args.share, "off": off,
               "shadow": on, "shadowed": shadowed, "dropped": dropped,
               "agreement": runner.stats.agreement, "load_avg": os.getloadavg(),
               "model_process": args.model_process, "cpus": len(os.sched_getaffinity(0))}  # fmt: skip
        rows.append(row)
        print(json.dumps(row))
    runner.close()
    await engine.close()
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | clients | p50 off | p50 shadow | p99 off | p99 shadow | p99 added | "
          "img/s off | img/s shadow | shadowed / dropped | agreement | load avg |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        off, on = r["off"], r["shadow"]
        print(f"| {r['model']} | {r['clients']} | {off['p50_ms']:.1f} ms | {on['p50_ms']:.1f} ms "
              f"| {off['p99_ms']:.1f} ms | {on['p99_ms']:.1f} ms "
              f"| {on['p99_ms'] - off['p99_ms']:+.1f} ms | {off['img_s']:.1f} | {on['img_s']:.1f} "
              f"| {r['shadowed']} / {r['dropped']} | {r['agreement']:.6f} "
              f"| {' '.join(f'{x:.2f}' for x in r['load_avg'])} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-random", choices=sorted(MODELS))
    ap.add_argument("--clients", default="1,4", help="concurrent clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per arm per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--share", type=float, default=1.0, help="serve.shadow.share of the shadow arm")
    ap.add_argument("--queue", type=int, default=None, help="default: serve.shadow.queue")
    ap.add_argument("--model-process", choices=["on", "off"], default=None,
                    help="the champion in a child process (default: serve.model_process)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="3 s x 1 round, 1 client")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    params = load_params()
    args.clients = [1] if args.quick else [int(c) for c in args.clients.split(",")]
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    args.queue = args.queue or params.serve.shadow.queue
    mp = params.serve.model_process if args.model_process is None else args.model_process == "on"
    args.model_process = mp
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = asyncio.run(measure(args))
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
