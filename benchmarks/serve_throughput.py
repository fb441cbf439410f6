"""Serving throughput: the live service under 1/4/16 concurrent clients vs the bare model.

Starts `bentoml serve` with a model (default: an untrained base-4 U-Net registered in a temporary
MLflow store), drives `POST /segment` for a fixed time per concurrency level, then runs a soak at
the highest level while sampling the service's RSS. In the same run it measures the bare model's
in-process batched forward throughput (`roadseg.serving.predict`) on the same images::

    .venv/bin/python benchmarks/serve_throughput.py --duration 20 --soak 120 --out reports/serve_bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def make_images(n: int, h: int, w: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=90
        )
        out.append(buf.getvalue())
    return out


def bare_throughput(model_uri: str, images: list[np.ndarray], batch: int, duration: float) -> float:
    """Images/s of the in-process batched forward (preprocess + model + postprocess)."""
    from roadseg.batching import create_engine

    engine, _ = create_engine(model_uri, max_batch_size=batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        engine.predict_now(images[:batch])
        done += batch
    return done / (time.perf_counter() - start)


def drive(url: str, payloads: list[bytes], clients: int, duration: float, headers: dict) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + duration

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post(
                        "/segment",
                        content=payloads[i % len(payloads)],
                        headers={"Content-Type": "image/jpeg"},
                    )
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1
                i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def tree_rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model-uri", default=None, help="serve this model (needs MLFLOW_TRACKING_URI)"
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument(
        "--soak", type=float, default=120.0, help="seconds of the memory soak (0: skip)"
    )
    ap.add_argument("--size", default="360x640", help="HxW of the test images")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from roadseg.config import load_params
    from roadseg.launcher import register_random_model, running_service

    params = load_params(os.environ.get("ROADSEG_PARAMS") or None)
    h, w = (int(x) for x in args.size.split("x"))
    payloads = make_images(32, h, w)
    arrays = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads]
    tmp = Path(tempfile.mkdtemp(prefix="roadseg-bench-"))
    env = {"ROADSEG_MONITOR_DIR": str(tmp / "monitoring"), "BENTOML_HOME": str(tmp / "bentoml")}
    if args.model_uri:
        uri = args.model_uri
    else:
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        register_random_model(tracking)
        os.environ["MLFLOW_TRACKING_URI"] = tracking
        uri = "models:/roadseg-unet@champion"
    env |= {
        "ROADSEG_MODEL_URI": uri,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", ""),
    }
    headers = (
        {"X-API-Key": os.environ["ROADSEG_API_KEY"]} if os.environ.get("ROADSEG_API_KEY") else {}
    )

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    bare = bare_throughput(uri, arrays, params.serve.batch_size, args.duration)
    print(f"bare model, batch {params.serve.batch_size}: {bare:.1f} images/s")
    report: dict = {
        "image_size": [h, w],
        "batch_size": params.serve.batch_size,
        "bare_images_per_s": bare,
        "levels": [],
    }
    with running_service(env, log_path=tmp / "serve.log") as url:
        drive(url, payloads, 4, 3.0, headers)  # warm the HTTP path
        for n in (int(c) for c in args.clients.split(",")):
            res = drive(url, payloads, n, args.duration, headers)
            res["share_of_bare"] = res["throughput_rps"] / bare
            report["levels"].append(res)
            print(json.dumps(res))
        if args.soak > 0:
            import psutil

            server = next(
                p
                for p in psutil.process_iter(["cmdline"])
                if url.rsplit(":", 1)[1] in " ".join(p.info["cmdline"] or [])
            )
            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                t0 = time.perf_counter()
                while not stop.is_set():
                    samples.append((time.perf_counter() - t0, tree_rss(server.pid)))
                    stop.wait(5)

            sampler = threading.Thread(target=sample)
            sampler.start()
            clients = max(int(c) for c in args.clients.split(","))
            soak = drive(url, payloads, clients, args.soak, headers)
            stop.set()
            sampler.join()
            rss = [s[1] / 2**20 for s in samples]
            half = max(1, len(rss) // 2)
            soak |= {
                "seconds": args.soak,
                "rss_mib_first": rss[0],
                "rss_mib_last": rss[-1],
                "rss_mib_max": max(rss),
                "rss_growth_second_half_mib": rss[-1] - rss[half - 1],
            }
            report["soak"] = soak
            print(json.dumps(soak))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
