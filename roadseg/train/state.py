"""What a training checkpoint carries, written and read by one pair of functions.

`TrainState` is the loop's bookkeeping (epochs done, best score, early-stopping counter, history,
MLflow run id); `save_state` writes it with the model, optimiser, scheduler and RNG states to
`last.pt` (and the best weights to `best.pt`); `load_state` reads it back for `--resume`. The
checkpoint keys are the ones `roadseg.models.io.load_model` reads from a `.pt` file.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadseg.models.io import load_checkpoint, save_checkpoint, unwrap
from roadseg.models.spec import ModelSpec

# Keys of best.pt: the weights and what `load_model` reports about them.
BEST_KEYS = ("model", "epoch", "best_metric", "best_val", "spec", "run_id")


@dataclass
class TrainState:
    """The loop's state between epochs: everything `--resume` needs besides the tensors."""

    epoch: int = 0  # epochs completed
    best_metric: float = -1.0  # best val mIoU so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last val mIoU gain (early stopping)
    best_val: dict[str, Any] = field(default_factory=dict)  # scores of the best epoch
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run that a resumed training continues

    def update(self, epoch: int, scores: dict[str, Any], matrix: torch.Tensor) -> bool:
        """Record a finished epoch's validation; True when val mIoU improved."""
        miou = scores["miou"] or 0.0
        self.epoch = epoch
        if miou > self.best_metric:
            self.best_metric, self.best_epoch, self.bad_epochs = miou, epoch, 0
            self.best_val = scores | {"confusion_matrix": matrix.cpu().tolist()}
            return True
        self.bad_epochs += 1
        return False


@dataclass
class Checkpoint:
    """A loaded `last.pt`: the state and the tensors to restore."""

    state: TrainState
    spec: ModelSpec
    params_digest: str | None
    tensors: dict[str, Any]  # model, optimizer, scheduler, rng

    def restore(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        """Load weights, optimiser, scheduler and RNG states (in place)."""
        model.load_state_dict(self.tensors["model"])
        optimizer.load_state_dict(self.tensors["optimizer"])
        scheduler.load_state_dict(self.tensors["scheduler"])
        set_rng_state(self.tensors["rng"])


def save_state(
    ckpt_dir: Path,
    state: TrainState,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    spec: ModelSpec,
    params_digest: str,
    improved: bool,
) -> None:
    """Write `last.pt`, then `best.pt` when the epoch improved (each atomically)."""
    ckpt = {
        **asdict(state),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "spec": spec.to_dict(),
        "params_digest": params_digest,
    }
    save_checkpoint(ckpt_dir / "last.pt", ckpt)
    if improved:
        save_checkpoint(ckpt_dir / "best.pt", {k: ckpt[k] for k in BEST_KEYS})


def load_state(path: Path) -> Checkpoint | None:
    """The checkpoint at `path` (a `last.pt`), or None when there is none."""
    if not path.is_file():
        return None
    raw = load_checkpoint(path)
    state = TrainState(**{k: raw[k] for k in TrainState.__dataclass_fields__ if k in raw})
    tensors = {k: raw[k] for k in ("model", "optimizer", "scheduler", "rng")}
    return Checkpoint(state, ModelSpec.from_dict(raw["spec"]), raw.get("params_digest"), tensors)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels: a seed reproduces a run (and a resumed run matches an unbroken one).
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
