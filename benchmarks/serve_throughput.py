"""Served throughput: `POST /segment` on a live `bentoml serve` vs in-process `predict`, same run.

Serves the demo model (`bench_models.demo_checkpoint`: U-Net base 16 at 96x160, briefly trained;
or `--model-uri`) and sends the real 1280x720 sample JPEGs as they are on disk. For each client
count it alternates, `--rounds` times, the bare in-process `predict` (batches of
`serve.batch_size`, the service idle, same torch thread count as the service) and that many
closed-loop clients on the service, `--duration` s each, so load from other jobs hits both alike;
the round with the median share served / predict is reported. Then a soak at the highest level samples the service's RSS every 5 s (flat memory) and
counts errors::

    .venv/bin/python benchmarks/serve_throughput.py                  # ~9 min: 3 levels + 120 s soak
    .venv/bin/python benchmarks/serve_throughput.py --quick          # 16 clients, 10 s + 20 s soak

The clients run in this process (threads) on the same machine: their CPU is part of the cost.
`--backend onnxruntime` serves (and predicts in-process) with ONNX Runtime (`serve.backend`);
the report adds the cold start (process start to `/readyz` 200) and p99 latency::

    .venv/bin/python benchmarks/serve_throughput.py --quick --backend onnxruntime
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from bench_models import demo_checkpoint, sample_images, sample_paths


def bare_rate(engine, images: list[np.ndarray], batch: int, seconds: float) -> float:
    """Images/s of `predict` (preprocess + forward + post-processing) in batches, in-process."""
    done, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.predict_now([images[(k + i) % len(images)] for i in range(batch)])
        done, k = done + batch, k + batch
    return done / (time.perf_counter() - start)


def drive(url: str, payloads: list[bytes], clients: int, seconds: float, headers: dict) -> dict:
    """`clients` closed-loop clients, each posting one JPEG at a time for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as c:
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post(
                        "/segment?format=mask",
                        content=payloads[i % len(payloads)],
                        headers={"Content-Type": "image/jpeg"},
                    )
                    error = None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    error = type(e).__name__
                with lock:
                    if error is None:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors.append(error)
                i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies or [np.nan]) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "served_img_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def tree_rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    total = 0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def soak(url: str, payloads: list[bytes], clients: int, seconds: float, headers: dict) -> dict:
    """A long run at `clients`, sampling the service's RSS (all its processes) every 5 s."""
    import psutil

    # `bentoml serve` becomes circusd (same pid), which holds the listening socket; its worker
    # processes are its children
    port = int(url.rsplit(":", 1)[1])
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
    server = next(psutil.Process(p) for p in pids if psutil.Process(p).ppid() not in pids)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(tree_rss(server.pid))
            stop.wait(5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    res = drive(url, payloads, clients, seconds, headers)
    stop.set()
    sampler.join()
    rss = [s / 2**20 for s in samples]
    half = len(rss) // 2
    return res | {
        "seconds": seconds,
        "rss_mib_first": rss[0],
        "rss_mib_max": max(rss),
        "rss_mib_last": rss[-1],
        "rss_mib_growth_second_half": rss[-1] - rss[half],
        "rss_mib_every_5s": [round(x) for x in rss],
    }


def print_table(levels: list[dict], soaked: dict | None) -> None:
    print(
        "\n| clients | predict img/s (same run) | served img/s | served / predict | p50 ms "
        "| p95 ms | p99 ms | errors | all rounds' shares | load avg |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in levels:
        print(
            f"| {r['clients']} | {r['predict_img_s']:.2f} | {r['served_img_s']:.2f} | "
            f"{r['share_of_predict']:.0%} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['errors_all_rounds']} | {', '.join(f'{x:.0%}' for x in r['shares_all_rounds'])} "
            f"| {' '.join(f'{x:.2f}' for x in r['load_avg'])} |"
        )
    if soaked:
        print(
            f"\nsoak {soaked['seconds']:.0f} s at {soaked['clients']} clients: "
            f"{soaked['requests']} requests, {soaked['errors']} errors {soaked['error_kinds']}, "
            f"{soaked['served_img_s']:.2f} img/s; service RSS {soaked['rss_mib_first']:.0f} -> "
            f"{soaked['rss_mib_last']:.0f} MiB (max {soaked['rss_mib_max']:.0f}, second half "
            f"{soaked['rss_mib_growth_second_half']:+.0f} MiB)\nRSS every 5 s: {soaked['rss_mib_every_5s']}"
        )


def level(url, engine, images, payloads, clients: int, batch: int, args) -> dict:
    """`args.rounds` alternations of bare predict (the service idle) and `clients` clients,
    `args.duration` s each; the round with the median share served / predict is reported."""
    rounds = []
    for _ in range(args.rounds):
        bare = bare_rate(engine, images, batch, args.duration)
        row = drive(url, payloads, clients, args.duration, {})
        row |= {"predict_img_s": bare, "share_of_predict": row["served_img_s"] / bare}
        rounds.append(row | {"load_avg": os.getloadavg()})
    rounds.sort(key=lambda r: r["share_of_predict"])
    mid = rounds[len(rounds) // 2]
    return mid | {
        "shares_all_rounds": [round(r["share_of_predict"], 3) for r in rounds],
        "errors_all_rounds": sum(r["errors"] for r in rounds),
    }


def run(args: argparse.Namespace) -> dict:
    from roadseg.config import load_params
    from roadseg.serve.engine import create_engine
    from roadseg.testing import running_service

    batch = load_params(os.environ.get("ROADSEG_PARAMS") or None).serve.batch_size
    payloads = [p.read_bytes() for p in sample_paths()]
    images = sample_images()
    uri = args.model_uri or str(demo_checkpoint())
    tmp = Path(tempfile.mkdtemp(prefix="roadseg-serve-bench-"))
    env = {"ROADSEG_MODEL_URI": uri, "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
           "BENTOML_HOME": str(tmp / "bentoml"), "ROADSEG_API_KEY": None,
           "ROADSEG_BACKEND": args.backend}  # fmt: skip
    if args.threads:  # the same intra-op thread count in both processes
        import torch

        torch.set_num_threads(args.threads)
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    engine, _ = create_engine(uri, max_batch_size=batch, backend=args.backend)
    report: dict = {"batch_size": batch, "image": list(images[0].shape), "levels": [],
                    "backend": args.backend}  # fmt: skip
    started = time.perf_counter()
    with running_service(env, log_path=tmp / "serve.log") as url:
        report["cold_start_s"] = time.perf_counter() - started
        print(f"{args.backend}: ready {report['cold_start_s']:.1f} s after the process started")
        drive(url, payloads, 4, 3.0, {})  # warm the HTTP path
        for n in (int(c) for c in args.clients.split(",")):
            report["levels"].append(level(url, engine, images, payloads, n, batch, args))
            print(json.dumps(report["levels"][-1]))
        if args.soak > 0:
            clients = max(int(c) for c in args.clients.split(","))
            report["soak"] = soak(url, payloads, clients, args.soak, {})
            print(json.dumps(report["soak"]))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-uri", default=None, help="default: the trained demo checkpoint")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="bare/served alternations per level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--soak", type=float, default=120.0, help="seconds of the soak (0: skip)")
    ap.add_argument("--quick", action="store_true", help="16 clients, 1 round, 20 s soak")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in the service (0: default)"
    )
    ap.add_argument("--backend", default="torch", help="serve.backend: torch or onnxruntime")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.clients, args.rounds, args.soak = "16", 1, 20.0
    report = run(args)
    print_table(report["levels"], report.get("soak"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
