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

`--backend torch,onnxruntime` compares the backends served side by side instead: both services
start (one after the other, each cold start timed while the other is idle), then the rounds of
each client count alternate between them, so load from other jobs hits both alike; each
service's RSS (all its processes) is sampled every second and its peak reported::

    .venv/bin/python benchmarks/serve_throughput.py --backend torch,onnxruntime --clients 16 \
        --rounds 3 --duration 10 --models demo-effnet,effnet,base64

`name@W` serves that backend with W BentoML workers (each with its own model process), e.g.
`--backend torch,torch@2,onnxruntime,onnxruntime@2`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from bench_models import MODELS, demo_checkpoint, sample_images, sample_paths

from roadseg.testing import REPO, running_service


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
        # long: a batch of the 31 M reference takes a minute on 2 cores
        with httpx.Client(base_url=url, timeout=900, headers=headers) as c:
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


def service_pid(url: str) -> int:
    """The pid of `bentoml serve` at `url`: circusd (same pid), whose descendants are every
    worker and its model process. psutil names one holder of a shared listening socket, often
    a worker: climb from it to circusd, or the tree would miss the manager and other workers."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
    holder = psutil.Process(min(pids))
    for proc in (holder, *holder.parents()):
        if proc.name() == "circusd":
            return proc.pid
    raise RuntimeError(f"no circusd above pid {holder.pid} serving {url}")


def soak(url: str, payloads: list[bytes], clients: int, seconds: float, headers: dict) -> dict:
    """A long run at `clients`, sampling the service's RSS (all its processes) every 5 s."""
    import psutil

    server = psutil.Process(service_pid(url))
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


def with_peak_rss(pid: int, fn):
    """fn()'s result and the peak RSS (MiB) of the process tree `pid`, sampled every second."""
    peak, stop = [tree_rss(pid)], threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            peak.append(tree_rss(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return fn(), max(peak) / 2**20
    finally:
        stop.set()
        sampler.join()


def parse_backend(spec: str) -> tuple[str, str | None, str | None]:
    """`name[:threads][@workers]` -> (serve.backend, inference threads, BentoML workers):
    onnxruntime:1 runs one inference thread, torch@2 two worker processes (each its own model
    process); None leaves the service's default."""
    spec, _, workers = spec.partition("@")
    backend, _, threads = spec.partition(":")
    return backend, threads or None, workers or None


def compare_model(name: str, backends: list[str], payloads: list[bytes], args) -> list[dict]:
    """Both backends serving one model: cold starts, then interleaved rounds per client count;
    the median round (by served img/s) of each backend."""
    tmp = Path(tempfile.mkdtemp(prefix="roadseg-serve-bench-"))
    if name.startswith("bento:"):  # a packaged Bento (its tag) in $BENTOML_HOME: what ships
        target, home, cwd = name.removeprefix("bento:"), os.environ.get("BENTOML_HOME"), tmp
        env0 = {"ROADSEG_MODEL_URI": None, "BENTOML_HOME": home, "MLFLOW_TRACKING_URI": None}
    else:
        target, cwd = "bento.service:RoadSegService", REPO
        env0 = {"ROADSEG_MODEL_URI": str(MODELS[name]()), "BENTOML_HOME": str(tmp / "bentoml")}
    rows = []
    with contextlib.ExitStack() as stack:
        urls, cold = {}, {}
        for b in backends:
            backend, threads, workers = parse_backend(b)
            env = env0 | {"ROADSEG_MONITOR_DIR": str(tmp / f"monitoring-{b}"),
                          "ROADSEG_API_KEY": None, "ROADSEG_BACKEND": backend,
                          "ROADSEG_INTRA_OP_THREADS": threads}  # fmt: skip
            if workers:  # BentoML's per-service setting, as a deployment would override it
                env["BENTOML_CONFIG_OPTIONS"] = f"services.roadseg.workers={workers}"
            started = time.perf_counter()
            log = tmp / f"serve-{b}.log"
            urls[b] = stack.enter_context(
                running_service(env, target=target, cwd=cwd, log_path=log, timeout=900)
            )
            cold[b] = time.perf_counter() - started
            print(f"{name}, {b}: ready {cold[b]:.1f} s after the process started")
            drive(urls[b], payloads, 1, 0.01, {})  # one request: the HTTP path warm
        for n in (int(c) for c in args.clients.split(",")):
            rounds: dict[str, list[dict]] = {b: [] for b in backends}
            for _ in range(args.rounds):
                for b in backends:
                    run = functools.partial(drive, urls[b], payloads, n, args.duration, {})
                    row, peak = with_peak_rss(service_pid(urls[b]), run)
                    rounds[b].append(row | {"rss_peak_mib": peak, "load_avg": os.getloadavg()})
                    print(json.dumps({"model": name, "backend": b} | rounds[b][-1]))
            for b in backends:
                ordered = sorted(rounds[b], key=lambda r: r["served_img_s"])
                rows.append(ordered[len(ordered) // 2] | {
                    "model": name, "backend": b, "cold_start_s": cold[b],
                    "rounds_img_s": [round(r["served_img_s"], 3) for r in rounds[b]],
                    "errors_all_rounds": sum(r["errors"] for r in rounds[b]),
                    "rss_peak_mib": max(r["rss_peak_mib"] for r in rounds[b])})  # fmt: skip
    return rows


def print_compare(rows: list[dict], base: str) -> None:
    print(
        "\n| model | backend | clients | served img/s | vs " + base + " | p50 ms | p99 ms | "
        "peak RSS MiB | cold start s | errors | rounds' img/s | load avg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    ref = {(r["model"], r["clients"]): r["served_img_s"] for r in rows if r["backend"] == base}
    for r in rows:
        ratio = r["served_img_s"] / ref[(r["model"], r["clients"])]
        print(
            f"| {r['model']} | {r['backend']} | {r['clients']} | {r['served_img_s']:.2f} | "
            f"{ratio:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['rss_peak_mib']:.0f} | "
            f"{r['cold_start_s']:.1f} | {r['errors_all_rounds']} | "
            f"{', '.join(f'{x:.2f}' for x in r['rounds_img_s'])} | "
            f"{' '.join(f'{x:.2f}' for x in r['load_avg'])} |"
        )


def compare(args: argparse.Namespace) -> list[dict]:
    backends, payloads = args.backend.split(","), [p.read_bytes() for p in sample_paths()]
    print(f"{len(payloads)} real JPEGs, {os.cpu_count()} cores, {args.rounds} x "
          f"{args.duration:.0f} s per backend and client count, rounds interleaved")  # fmt: skip
    rows = [
        r for name in args.models.split(",") for r in compare_model(name, backends, payloads, args)
    ]
    print_compare(rows, backends[0])
    return rows


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
    ap.add_argument("--backend", default="torch",
                    help="serve.backend: torch or onnxruntime; several (torch,onnxruntime) "
                    "compare them served side by side, the first the reference; name:N "
                    "serves with N inference threads (serve.intra_op_threads), name@W with W "
                    "BentoML workers")  # fmt: skip
    ap.add_argument("--models", default="demo-effnet",
                    help="with several backends: comma-separated bench_models.MODELS names")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.clients, args.rounds, args.soak = "16", 1, 20.0
    if "," in args.backend:
        rows = compare(args)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=2))
        return
    report = run(args)
    print_table(report["levels"], report.get("soak"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
