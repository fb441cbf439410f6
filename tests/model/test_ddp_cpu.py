"""DDP on the CPU: two processes under torchrun with the gloo backend train one model, and the
validation matrix, sharded over the ranks then all-reduced, covers the whole split exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from roadseg.config import load_params
from roadseg.data.dataset import build_dataset
from roadseg.metrics.segmentation import ConfusionMatrix
from roadseg.models.io import build_from_spec, load_checkpoint
from roadseg.models.spec import ModelSpec

pytestmark = pytest.mark.slow  # two processes starting torch: ~30 s on a loaded 2-core machine

SETS = ["data.num_workers=0", "model.base_channels=4", "train.image_size=[32,48]",
        "train.batch_size=2", "train.epochs=2"]  # fmt: skip

DRIVER = textwrap.dedent(
    """
    import sys
    import torch.distributed as dist
    from roadseg.config import load_params
    from roadseg.train.loop import train_model

    data, ckpt = sys.argv[1], sys.argv[2]
    params = load_params(None, [*sys.argv[3:], f"train.checkpoint_dir={ckpt}"])
    train_model(params, data, tracking_uri=None, progress=False)
    """
)


def test_two_gloo_ranks_train_and_validate_on_the_whole_split(tmp_path: Path) -> None:
    from roadseg.data.synth import synthesize_dataset

    data, ckpt = tmp_path / "d", tmp_path / "ckpt"
    synthesize_dataset(data, train=4, val=3, test=0, height=32, width=48, seed=5)  # 3 val: 2 + 1
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(data), str(ckpt), *SETS]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    last = load_checkpoint(ckpt / "last.pt")
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert "resuming" not in res.stdout

    # Re-validate the saved weights in one process: the DDP run's all-reduced matrix must be the
    # matrix of the whole split (not one rank's shard, not a doubled one).
    params = load_params(None, SETS)
    spec = ModelSpec.from_dict(last["spec"])
    model = build_from_spec(spec)
    model.load_state_dict(last["model"])
    model.eval()
    val = build_dataset(data, params, "val", train=False, mean=list(spec.mean), std=list(spec.std))
    cm = ConfusionMatrix(spec.num_classes)
    valid = 0
    with torch.no_grad():
        for i in range(len(val)):
            x, y = val[i]
            cm.update(model(x[None]).argmax(1), y[None])
            valid += int((y != 255).sum())
    assert cm.matrix.sum() == valid
    assert last["history"][-1]["val_miou"] == pytest.approx(cm.compute()["miou"], abs=0.01)
    if last["best_epoch"] == 2:
        assert sum(map(sum, last["best_val"]["confusion_matrix"])) == valid
