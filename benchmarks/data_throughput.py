"""Data throughput on 1280x720 masks: validation, remap, the I/O floor and a naive remap, in one run.

Inputs: the real BDD100k sample (../shared/data/bdd100k-sample, its 16 pairs repeated under new
names up to --n), when present, and a synthetic 1280x720 set of --n pairs. For each input:

  io floor       decode every mask PNG and encode it again (nothing else): the cost no remap avoids;
                 "both steps": also the image and the second mask read that validation needs
  validate       roadseg.data.validation.validate_dataset (per-file table + GX suite + Data Docs)
  remap          roadseg.data.remap.remap_dataset (decode, LUT, encode, histogram, image hard-link)
  validate+remap both, back to back, as `make demo` and `dvc repro` run them
  lut kernel     lut[mask] on decoded masks, in memory
  naive kernel   a loop over the 19 source classes (out[mask == s] = d), in memory

Every file-level step uses the same worker processes (all cores). Targets: validate+remap >= 70%
of the io floor, and the LUT beats the naive loop on every input.

    .venv/bin/python benchmarks/data_throughput.py --n 96
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from roadseg.config import load_params
from roadseg.data import bdd100k
from roadseg.data.remap import remap_dataset, remap_mask
from roadseg.data.synth import synthesize_dataset

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared/data/bdd100k-sample"


def naive_remap(mask: np.ndarray, mapping: dict[int, int], ignore_index: int) -> np.ndarray:
    """The obvious loop over classes: one full-image comparison per source class."""
    out = np.full_like(mask, ignore_index)
    for src, dst in mapping.items():
        out[mask == src] = dst
    return out


def _io_one(args: tuple[Path, Path]) -> None:
    """The remap's file work alone: decode a mask PNG, encode it again."""
    src, dst = args
    bdd100k.write_mask(dst, bdd100k.read_label(src))


def _io_both(args: tuple[Path, Path, Path]) -> None:
    """What validate and remap read and write, with no other work: the image (DCT-draft decode,
    as validation does), the mask twice (once per step) and one mask encode."""
    image, src, dst = args
    with Image.open(image) as im:
        im.draft("RGB", (im.width // 8, im.height // 8))
        im.load()
    bdd100k.read_label(src)
    _io_one((src, dst))


def replicate_sample(src: Path, out: Path, n: int) -> None:
    """The real sample's pairs repeated under new stems until `n` train pairs exist (hard links)."""
    pairs = [p for s in ("train", "val") for p in bdd100k.list_pairs(src, s)]
    for i in range(n):
        p = pairs[i % len(pairs)]
        stem = f"{p.stem}-{i:04d}"
        for f, d in ((p.image, bdd100k.IMAGE_DIR), (p.label, bdd100k.MASK_DIR)):
            dst = out / d / "train" / f"{stem}{f.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, dst)


def measure(root: Path, work: Path, params, workers: int) -> dict[str, float]:
    from roadseg.data.validation import validate_dataset

    pairs = bdd100k.list_pairs(root, "train")
    masks = [s.label for s in pairs]
    n = len(masks)
    rates: dict[str, float] = {}
    for name, fn, jobs in (
        ("io floor (decode+encode)", _io_one, [(m, work / "io" / m.name) for m in masks]),
        (
            "io floor (both steps)",
            _io_both,
            [(s.image, s.label, work / "io" / s.label.name) for s in pairs],
        ),
    ):
        t = time.perf_counter()
        with Pool(workers) as pool:
            pool.map(fn, jobs, chunksize=4)
        rates[name] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    result = validate_dataset(
        root, params.data, report_dir=work / "report", workers=workers, progress=False
    )
    t_val = time.perf_counter() - t
    assert result.success, [f[:3] for f in result.failures[:5]]
    rates["validate"] = n / t_val
    t = time.perf_counter()
    remap_dataset(root, work / "remapped", params.data, workers=workers, progress=False)
    t_remap = time.perf_counter() - t
    rates["remap"] = n / t_remap
    rates["validate+remap"] = n / (t_val + t_remap)
    decoded = [bdd100k.read_label(m) for m in masks[: min(n, 32)]]
    lut = params.data.lookup_table()
    for name, fn in (
        ("lut kernel", lambda m: remap_mask(m, lut)),
        ("naive kernel", lambda m: naive_remap(m, params.data.mapping, params.data.ignore_index)),
    ):
        t = time.perf_counter()
        for m in decoded:
            fn(m)
        rates[name] = len(decoded) / (time.perf_counter() - t)
    for m in decoded:
        assert np.array_equal(remap_mask(m, lut), naive_remap(m, params.data.mapping, 255))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="masks per input")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    params = load_params()
    tmp = Path(tempfile.mkdtemp(prefix="roadseg-bench-"))
    inputs: dict[str, Path] = {}
    try:
        # Warm-up: `import great_expectations` and GX's first context cost seconds once per
        # process; they are not per-mask work, so they stay out of the figures.
        from roadseg.data.validation import validate_dataset

        synthesize_dataset(tmp / "warm", train=2, val=0, test=0, height=64, width=96, seed=0)
        validate_dataset(tmp / "warm", params.data, report_dir=tmp / "warm-report", progress=False)
        if (SAMPLE / "images/10k").is_dir():
            replicate_sample(SAMPLE, tmp / "real", args.n)
            inputs["real sample"] = tmp / "real"
        else:
            print(f"real sample not found at {SAMPLE}; synthetic input only")
        synthesize_dataset(
            tmp / "synth", train=args.n, val=0, test=0, height=720, width=1280, seed=0
        )
        inputs["synthetic"] = tmp / "synth"
        results = {}
        for name, root in inputs.items():
            print(f"measuring {name} ({args.n} masks 1280x720, {args.workers} worker(s)) ...")
            results[name] = measure(
                root, tmp / f"work-{name.replace(' ', '_')}", params, args.workers
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(
        title=f"masks/s on 1280x720 masks ({args.workers} worker processes, {os.cpu_count()} cores)"
    )
    table.add_column("step")
    for name in results:
        table.add_column(name, justify="right")
    for step in next(iter(results.values())):
        table.add_row(step, *(f"{r[step]:.1f}" for r in results.values()))
    table.add_row(
        "remap / io floor (decode+encode)",
        *(f"{r['remap'] / r['io floor (decode+encode)']:.0%}" for r in results.values()),
    )
    table.add_row(
        "validate+remap / io floor (both steps)",
        *(f"{r['validate+remap'] / r['io floor (both steps)']:.0%}" for r in results.values()),
    )
    table.add_row(
        "lut / naive kernel",
        *(f"{r['lut kernel'] / r['naive kernel']:.1f}x" for r in results.values()),
    )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
