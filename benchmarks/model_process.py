"""What the model process costs (`serve.model_process`): the engine's predictions at 1280x720 with
the network in the worker vs in its child process (`roadseg.serve.modelproc`).

On the real BDD100k sample, for the demo model (U-Net base 16 at 96x160) and the base-64
reference (31 M parameters at 368x640), `InferenceEngine.predict_now` (prepare, forward,
post-process) with each, interleaved rounds in one run, medians; checks first that both give
identical masks. The child's cost is the copy of each batch's inputs and logits through a pipe.
Besides img/s (wall clock, which a loaded machine skews), the CPU seconds per image of the worker
and, with the model process, of its child: the work each way costs, whatever else runs::

    .venv/bin/python benchmarks/model_process.py                    # ~5 min
    .venv/bin/python benchmarks/model_process.py --models demo-random --quick
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import psutil
from bench_models import MODELS, sample_images

from roadseg.models.io import load_model
from roadseg.serve.engine import InferenceEngine
from roadseg.serve.modelproc import ModelProcess


def bench(name: str, path, images, args) -> dict:
    model, spec, _ = load_model(path)
    child = ModelProcess.start(model, spec)
    try:
        inproc = InferenceEngine(model, spec, {}, max_batch_size=args.batch)
        viaproc = InferenceEngine(child, spec, {}, max_batch_size=args.batch)
        check = images[: args.batch]
        same = all(
            np.array_equal(a.mask, b.mask)
            for a, b in zip(inproc.predict_now(check), viaproc.predict_now(check), strict=True)
        )
        batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
        procs = {"in_worker": [psutil.Process()],
                 "model_process": [psutil.Process(), psutil.Process(child.pid)]}  # fmt: skip
        fns = {"in_worker": inproc.predict_now, "model_process": viaproc.predict_now}
        rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                rounds[k].append(measure(fn, batches, procs[k], args.seconds))
        row = {"model": name, "input": list(spec.image_size), "batch": args.batch,
               "masks_identical": same, "rounds": rounds, "load_avg": os.getloadavg()}  # fmt: skip
        for k, v in rounds.items():
            row[f"{k}_img_s"] = float(np.median([r[0] for r in v]))
            row[f"{k}_cpu_ms"] = float(np.median([r[1] for r in v]))
        row["ratio"] = row["model_process_img_s"] / row["in_worker_img_s"]
        return row
    finally:
        child.close()


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)  # user + system


def measure(fn, batches, procs, seconds: float) -> tuple[float, float]:
    """(img/s, CPU ms per image of `procs`) of `fn` over `seconds`."""
    done, k = 0, 0
    cpu, start = cpu_seconds(procs), time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[k % len(batches)]
        fn(batch)
        done, k = done + len(batch), k + 1
    wall, cpu = time.perf_counter() - start, cpu_seconds(procs) - cpu
    return done / wall, 1000 * cpu / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,base64", help="demo, demo-random, base64")
    ap.add_argument("--batch", type=int, default=8, help="images per batch (serve.batch_size)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 s x 1 round")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    images = sample_images()
    print(f"{len(images)} real images, {os.cpu_count()} cores, {args.rounds} x {args.seconds} s")
    rows = [bench(name, MODELS[name](), images, args) for name in args.models.split(",")]
    print(
        "| model | input | batch | in the worker: img/s, CPU ms/img | model process: img/s, "
        "CPU ms/img (worker + child) | img/s ratio | CPU ratio | masks equal | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input'][0]}x{r['input'][1]} | {r['batch']} | "
              f"{r['in_worker_img_s']:.2f}, {r['in_worker_cpu_ms']:.0f} | "
              f"{r['model_process_img_s']:.2f}, {r['model_process_cpu_ms']:.0f} | "
              f"{r['ratio']:.2f} | {r['model_process_cpu_ms'] / r['in_worker_cpu_ms']:.2f} | "
              f"{r['masks_identical']} | {r['load_avg'][0]:.1f} |")  # fmt: skip
    print(json.dumps([{k: v for k, v in r.items() if k != "rounds"} for r in rows]))


if __name__ == "__main__":
    main()
