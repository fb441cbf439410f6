"""Post-processing at full resolution stays within 64 bytes per output pixel (issue 11).

Each case runs in a fresh Python process: post-process a 10 Mpx output (2500 x 4000) from 14
logit maps and compare the process's peak RSS (`VmHWM`, reset just before through
`/proc/self/clear_refs`) with its RSS just before. Torch's allocations are invisible to
tracemalloc, so RSS it is. Not `ru_maxrss`: Linux carries it across fork and exec, so under a
large pytest parent it reports the parent's size. A control runs the straightforward
full-size upsample + softmax the same way and must exceed the budget, so the measurement works.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BUDGET = 64  # bytes per output pixel
H, W = 2500, 4000

SCRIPT = """
import json, sys
import psutil, torch
import torch.nn.functional as F
from roadseg.models.spec import ModelSpec
from roadseg.inference.predict import postprocess

torch.set_num_threads(1)
h, w = int(sys.argv[3]), int(sys.argv[4])
names = ("road",) + tuple(f"c{i}" for i in range(1, 14))
spec = ModelSpec(model_name="unet", num_classes=14, in_channels=3, base_channels=4,
                 image_size=(96, 160), mean=(0.5,) * 3, std=(0.25,) * 3, class_names=names,
                 colors=((0, 0, 0),) * 14)
g = torch.Generator().manual_seed(0)
lg = torch.randn(14, 96, 160, generator=g) * 4  # noise: nearly every cell mixes classes
if sys.argv[2] == "smooth":  # large class regions, like a trained model's logits
    lg = F.interpolate(lg[None, :, :6, :10], size=(96, 160), mode="bilinear")[0]
postprocess(lg.clone(), 50, 80, spec)  # warm-up: lazy init outside the measurement
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = psutil.Process().memory_info().rss
if sys.argv[1] == "control":
    up = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    conf, mask = up.softmax(dim=0).max(dim=0)
else:
    p = postprocess(lg, h, w, spec)
    road = p.road_probability if sys.argv[1] == "road" else None
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"bytes_per_pixel": (peak - before) / (h * w)}))
"""


def bytes_per_pixel(case: str, logits: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, case, logits, str(H), str(W)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes_per_pixel"]


@pytest.mark.parametrize(
    ("case", "logits"), [("mask", "noisy"), ("mask", "smooth"), ("road", "smooth")]
)
def test_postprocess_memory_per_output_pixel(case, logits):
    used = bytes_per_pixel(case, logits)
    print(f"{case} {logits}: {used:.1f} bytes per output pixel")
    assert used <= BUDGET


def test_control_full_size_softmax_exceeds_the_budget():
    assert bytes_per_pixel("control", "noisy") > BUDGET
