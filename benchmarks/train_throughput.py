"""Training throughput of the U-Net: images/s, achieved GFLOP/s and peak memory of forward+backward.

Each configuration runs in a fresh child process (clean peak-memory figures, no allocator
state carried over) which also measures the machine's matmul rate right after the model, so
the ratio compares the two under the same load — on a shared machine both move together.

    .venv/bin/python benchmarks/train_throughput.py                       # CPU: widths 64 and 32
    .venv/bin/python benchmarks/train_throughput.py --batch 1 2 --no-channels-last
    python benchmarks/train_throughput.py --device cuda --batch 16 --compile   # GPU: bf16, MFU

On CUDA the step runs under bf16 autocast with channels_last (and ``--compile``), the matmul
reference is bf16, and MFU is reported against ``--peak-tflops`` (default from the card name,
e.g. 989 dense bf16 TFLOP/s for H100/H200).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


@dataclass(frozen=True)
class Config:
    width: int
    batch: int
    height: int
    image_width: int
    device: str
    channels_last: bool
    compile: bool
    threads: int
    steps: int
    warmup: int
    num_classes: int


def _maxrss_mib() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this (fresh) process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: str, n: int, repeats: int = 10) -> float:
    """Median rate of an n×n @ n×n matmul (fp32 on CPU, bf16 on CUDA).

    The median, like the model's step time: on a shared machine a best-of figure would catch
    a quiet moment the model steps never had and understate the model's ratio.
    """
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool / cuBLAS handle
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_config(cfg: Config) -> dict[str, Any]:
    """Benchmark one configuration (meant to run in its own process)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from roadseg.models import build_model, count_parameters

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    device = cfg.device
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model("unet", in_channels=3, num_classes=cfg.num_classes, base_channels=cfg.width)
    model = model.to(device=device, memory_format=fmt).train()
    x = torch.randn(cfg.batch, 3, cfg.height, cfg.image_width, device=device).to(memory_format=fmt)
    y = torch.randint(0, cfg.num_classes, (cfg.batch, cfg.height, cfg.image_width), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()

    def step(net: torch.nn.Module) -> None:
        with autocast:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        net.zero_grad(set_to_none=True)

    rss_before = _maxrss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # FLOPs of one step, counted on the eager model (conv, matmul and their backward); the
    # step also warms up the allocator and the oneDNN kernel cache.
    counter = FlopCounterMode(display=False)
    with counter:
        step(model)
    flops_per_step = counter.get_total_flops()

    net = torch.compile(model) if cfg.compile else model
    for _ in range(cfg.warmup):
        step(net)
    _sync(device)
    times = []
    for _ in range(cfg.steps):
        t = time.perf_counter()
        step(net)
        _sync(device)
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        # Growth of the peak RSS over the model + inputs: activations, gradients, workspaces.
        peak_mib = _maxrss_mib() - rss_before
    median = statistics.median(times)
    achieved = flops_per_step / median / 1e9
    ref = matmul_gflops(device, 8192 if device == "cuda" else 2048)
    out = {
        **asdict(cfg),
        "params_m": count_parameters(model) / 1e6,
        "gflop_per_image": flops_per_step / cfg.batch / 1e9,
        "step_s_median": median,
        "step_s_min": min(times),
        "images_per_s": cfg.batch / median,
        "achieved_gflops": achieved,
        "matmul_gflops": ref,
        "ratio_to_matmul": achieved / ref,
        "peak_mem_mib": peak_mib,
        "peak_mem_kind": "cuda max_memory_allocated" if device == "cuda" else "maxrss growth",
    }
    if device == "cuda":
        name = torch.cuda.get_device_name()
        out["device_name"] = name
        peak = _PEAK_OVERRIDE or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        if peak:
            out["peak_tflops"] = peak
            out["mfu"] = achieved / (peak * 1e3)
    return out


_PEAK_OVERRIDE: float | None = None  # set in the child through the initializer


def _init_child(peak: float | None) -> None:
    global _PEAK_OVERRIDE
    _PEAK_OVERRIDE = peak


def format_row(r: dict[str, Any]) -> str:
    mfu = f" | {r['mfu']:.1%}" if "mfu" in r else ""
    return (
        f"| {r['width']} | {r['batch']} | {'yes' if r['channels_last'] else 'no'} | "
        f"{r['threads']} | {r['gflop_per_image']:.0f} | {r['images_per_s']:.3f} | "
        f"{r['achieved_gflops']:.1f} | {r['matmul_gflops']:.1f} | {r['ratio_to_matmul']:.0%} | "
        f"{r['peak_mem_mib']:.0f}{mfu} |"
    )


HEADER = (
    "| base | batch | channels_last | threads | GFLOP/img | img/s | GFLOP/s | matmul GFLOP/s "
    "| ratio | peak MiB |"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 32], help="U-Net base widths")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (CPU 2, GPU 16)")
    p.add_argument("--size", type=int, nargs=2, default=[368, 640], metavar=("H", "W"))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on for CUDA, off on CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps after the counted one")
    p.add_argument("--num-classes", type=int, default=14)
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (GPU)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    batches = args.batch or ([16] if device == "cuda" else [2])
    compile_ = args.compile if args.compile is not None else device == "cuda"
    threads = args.threads or os.cpu_count() or 1
    configs = [
        Config(
            w,
            b,
            args.size[0],
            args.size[1],
            device,
            args.channels_last,
            compile_,
            threads,
            args.steps,
            args.warmup,
            args.num_classes,
        )
        for w in args.widths
        for b in batches
    ]
    print(
        f"torch {torch.__version__}, device {device}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, input {args.size[0]}x{args.size[1]}"
    )
    print(HEADER + (" MFU |" if device == "cuda" else ""))
    print("|---" * (11 if device == "cuda" else 10) + "|")
    results = []
    ctx = mp.get_context("spawn")  # a fresh interpreter per config: clean maxrss, no CUDA fork
    for cfg in configs:
        with ProcessPoolExecutor(
            1, mp_context=ctx, initializer=_init_child, initargs=(args.peak_tflops,)
        ) as pool:
            r = pool.submit(run_config, cfg).result()
        results.append(r)
        print(format_row(r), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
