"""Early stopping: training stops once val mIoU has not strictly improved for `patience` epochs,
keeps the best epoch's model, and a resumed run honours the stop instead of training on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from roadseg.config import load_params
from roadseg.metrics.segmentation import ConfusionMatrix
from roadseg.models.io import load_checkpoint
from roadseg.train import loop as training
from roadseg.train.loop import train_model

# val mIoU per epoch: best at epoch 2; epoch 4 only equals it (not a gain), so epochs 3, 4, 5 are
# the three bad epochs of patience 3 and epoch 6 never runs.
SCRIPT = [0.5, 0.6, 0.55, 0.6, 0.58, 0.99, 0.99]


@pytest.fixture
def scripted_miou(monkeypatch) -> list[float]:
    """Validation scores whose mIoU follows SCRIPT (the rest is computed from the real matrix)."""
    seen: list[float] = []

    class Scripted(ConfusionMatrix):
        def compute(self, class_names=None):
            scores = super().compute(class_names)
            scores["miou"] = SCRIPT[len(seen)]
            seen.append(scores["miou"])
            return scores

    monkeypatch.setattr(training, "ConfusionMatrix", Scripted)
    return seen


def test_stops_after_patience_epochs_without_gain(tmp_path: Path, scripted_miou) -> None:
    from roadseg.data.synth import synthesize_dataset

    synthesize_dataset(tmp_path / "d", train=4, val=2, test=0, height=32, width=48, seed=3)
    data = tmp_path / "d"
    params = load_params(None, ["data.num_workers=0", "model.base_channels=4",
                                "train.image_size=[32,48]", "train.batch_size=2",
                                "train.epochs=10", "train.early_stopping_patience=3",
                                "train.sample_every=100",
                                f"train.checkpoint_dir={tmp_path / 'ckpt'}"])  # fmt: skip
    lines: list[str] = []
    res = train_model(params, data, tracking_uri=None, progress=False, echo=lines.append)
    assert scripted_miou == SCRIPT[:5]
    assert res.epochs_run == 5 and res.best_epoch == 2 and len(res.history) == 5
    assert [h["val_miou"] for h in res.history] == SCRIPT[:5]
    assert any("early stopping" in line for line in lines)
    best = load_checkpoint(tmp_path / "ckpt/best.pt")
    last = load_checkpoint(tmp_path / "ckpt/last.pt")
    assert best["epoch"] == 2 and best["best_metric"] == pytest.approx(0.6)
    assert last["epoch"] == 5 and last["bad_epochs"] == 3
    # the best checkpoint holds epoch 2's weights, not the last epoch's
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])

    again = train_model(params, data, tracking_uri=None, resume=True, progress=False,
                        echo=lines.append)  # fmt: skip
    assert again.epochs_run == 5 and len(scripted_miou) == 5  # no further epoch trained
