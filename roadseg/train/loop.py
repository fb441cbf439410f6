"""Training a segmentation model, readable top to bottom in `train_model`.

    roadseg train --data-dir data/bdd100k --model unet --loss dice_ce --set train.epochs=2
    torchrun --nproc_per_node=4 -m roadseg.cli train --data-dir data/bdd100k   # DDP, one GPU each

CPU, one GPU, or several GPUs under torchrun (DDP: each rank sees a shard, the validation
confusion matrices are summed across ranks, only rank 0 logs and writes checkpoints).
A checkpoint is written after every epoch (`last.pt`, and `best.pt` by val mIoU);
`resume=True` continues from `last.pt` and ends at the same epoch count, with the same weights,
as an uninterrupted run: data order and augmentation are seeded by (seed, epoch), not by
global RNG state. It also continues the same MLflow run (its id travels in the checkpoint).

`train_model` reads top to bottom: set-up (`setup_runtime`, `build_data`, `build_optimizer`,
`wrap_for_training`, `start_tracking`), then the loop (`train_one_epoch`, `validate`,
`log_epoch`, `save_state`), then `log_best_model`. What a checkpoint holds is
`roadseg.train.state.TrainState`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from roadseg import tracking
from roadseg.config import Params
from roadseg.data.dataset import build_loader
from roadseg.evaluate.segmentation import confusion_figure, flat_scores, sample_grid
from roadseg.metrics.segmentation import ConfusionMatrix
from roadseg.models.io import build_from_spec, load_checkpoint, log_model, unwrap
from roadseg.models.spec import ModelSpec
from roadseg.train.setup import (
    Runtime,
    TrainData,
    build_data,
    build_loss_for,
    build_optimizer,
    freeze_encoder_gradients,
    freeze_encoder_statistics,
    initial_model,
    load_init_model,
    setup_runtime,
    wrap_for_training,
)
from roadseg.train.state import Checkpoint, TrainState, load_state, save_state, seed_everything


@dataclass
class TrainResult:
    run_id: str | None
    model_uri: str | None  # models:/m-... of the logged best model (None when not logged)
    model_id: str | None
    best_val: dict[str, Any]  # segmentation scores of the best epoch
    best_epoch: int
    epochs_run: int  # epochs completed in total (including those before a resume)
    checkpoint_dir: Path
    tracking_uri: str | None = None
    fell_back: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        state: TrainState,
        checkpoint_dir: Path,
        run: tracking.TrackedRun | None,
        *,
        model_uri: str | None = None,
        model_id: str | None = None,
    ) -> TrainResult:
        """The result of a training that ended in `state`, tracked by `run` (or not)."""
        return cls(
            run_id=state.run_id if run is None else run.run_id,
            model_uri=model_uri,
            model_id=model_id,
            best_val=state.best_val,
            best_epoch=state.best_epoch,
            epochs_run=state.epoch,
            checkpoint_dir=checkpoint_dir,
            tracking_uri=None if run is None else run.tracking_uri,
            fell_back=bool(run and run.fell_back),
            history=state.history,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`roadseg train --json`): the best scores without the confusion matrix."""
        out = asdict(self) | {"checkpoint_dir": str(self.checkpoint_dir)}
        out["best_val"] = {k: v for k, v in self.best_val.items() if k != "confusion_matrix"}
        return out


def train_model(
    params: Params,
    data_dir: Path,
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    max_epochs_this_run: int | None = None,
    log_final_model: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train `params.model` with `params.loss` on `data_dir`; see the module docstring.

    Args:
        tracking_uri: MLflow tracking URI; None disables tracking (checkpoints only).
        max_epochs_this_run: stop after this many epochs of this call (a resumable
            interruption, as if the process had been killed after a checkpoint).
    """
    tp, data_dir, ckpt_dir = params.train, Path(data_dir), Path(params.train.checkpoint_dir)
    rt = setup_runtime(device)
    seed_everything(tp.seed)  # same seed on every rank: identical initial weights
    ckpt = checkpoint_to_resume(ckpt_dir / "last.pt", params, rt, echo) if resume else None
    init = None if ckpt else load_init_model(tp.init_from, tracking_uri)  # fine-tuning
    data = build_data(params, data_dir, rt, spec=ckpt.spec if ckpt else None, init=init)
    spec = data.spec
    model = initial_model(spec, resumed=ckpt is not None, init=init)
    model = model.to(rt.device, memory_format=torch.channels_last)
    loss_fn = build_loss_for(params, data.class_weights).to(rt.device)
    optimizer, scheduler = build_optimizer(model, tp, steps_per_epoch=data.steps_per_epoch)
    state = ckpt.state if ckpt else TrainState()
    if ckpt:
        ckpt.restore(model, optimizer, scheduler)
    net = wrap_for_training(model, rt, compile_=tp.compile)
    run = None
    if rt.master and tracking_uri:
        run = start_tracking(tracking_uri, params, data, rt, run_id=state.run_id,
                             run_name=run_name, echo=echo)  # fmt: skip
        state.run_id = run.run_id

    # --- the loop: train, validate, log, checkpoint -------------------------------------------
    start = state.epoch
    for epoch in range(start, tp.epochs):
        if max_epochs_this_run is not None and epoch - start >= max_epochs_this_run:
            break
        if state.bad_epochs >= tp.early_stopping_patience:
            if rt.master:
                echo(f"early stopping: no val mIoU gain for {state.bad_epochs} epochs")
            break
        train_loss, seconds = train_one_epoch(net, data, loss_fn, optimizer, scheduler, epoch,
                                              params, rt, progress=progress)  # fmt: skip
        # Validation at the training size; full-resolution scores come from `roadseg evaluate`.
        cm = validate(net, data.val_loader, spec.num_classes, params.data.ignore_index, rt)
        scores = cm.compute(list(spec.class_names))
        improved = state.update(epoch + 1, scores, cm.matrix)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_miou": scores["miou"] or 0.0,
                  "lr": scheduler.get_last_lr()[0],
                  "images_per_s": len(data.train_ds) / seconds}  # fmt: skip
        state.history.append(record)
        if not rt.master:
            continue
        echo(f"epoch {epoch + 1}/{tp.epochs}: train loss {train_loss:.4f}  val mIoU "
             f"{record['val_miou']:.4f}  best {state.best_metric:.4f} (epoch {state.best_epoch})")  # fmt: skip
        if run is not None:
            log_epoch(run, record, scores, state, model=model, data=data, matrix=cm.matrix,
                      figures=(epoch + 1) % tp.sample_every == 0 or epoch + 1 == tp.epochs)  # fmt: skip
        # Checkpoints after tracking, never depending on it: last.pt then best.pt.
        save_state(ckpt_dir, state, model=model, optimizer=optimizer, scheduler=scheduler,
                   spec=spec, params_digest=params.digest(), improved=improved)  # fmt: skip
    finished = state.epoch >= tp.epochs or state.bad_epochs >= tp.early_stopping_patience

    model_uri = model_id = None
    if run is not None:
        if finished and log_final_model and (ckpt_dir / "best.pt").is_file():
            model_uri, model_id = log_best_model(run, ckpt_dir / "best.pt", spec, state)
        run.end("FINISHED" if finished else "KILLED")
    if rt.ddp:
        dist.destroy_process_group()
    return TrainResult.of(state, ckpt_dir, run, model_uri=model_uri, model_id=model_id)


def checkpoint_to_resume(
    last: Path, params: Params, rt: Runtime, echo: Callable[[str], None]
) -> Checkpoint | None:
    """`last.pt` to resume from (None: start from scratch), saying what it found."""
    ckpt = load_state(last)
    if not rt.master:
        return ckpt
    if ckpt is None:
        echo(f"no checkpoint at {last}; starting from scratch")
        return None
    if ckpt.params_digest != params.digest():
        echo(f"warning: params differ from those of {last} (digest {ckpt.params_digest})")
    echo(f"resuming from {last}: {ckpt.state.epoch} of {params.train.epochs} epochs done")
    return ckpt


# --- one epoch -------------------------------------------------------------------------------


def train_one_epoch(
    net: torch.nn.Module,
    data: TrainData,
    loss_fn: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    epoch: int,
    params: Params,
    rt: Runtime,
    *,
    progress: bool,
) -> tuple[float, float]:
    """One pass over the training split (0-based `epoch`); (mean loss, seconds)."""
    tp = params.train
    data.train_ds.set_epoch(epoch)  # augmentation and order seeded by (seed, epoch)
    if data.train_sampler is not None:
        data.train_sampler.set_epoch(epoch)
    loader = build_loader(data.train_ds, batch_size=tp.batch_size, num_workers=params.data.num_workers,
                          shuffle=True, seed=tp.seed, epoch=epoch, sampler=data.train_sampler)  # fmt: skip
    net.train()
    freeze_encoder_statistics(unwrap(net), tp)
    freeze_encoder_gradients(unwrap(net), tp, epoch, ddp=rt.ddp)
    t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=rt.device)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tp.epochs}", disable=not (progress and rt.master))
    for images, masks in bar:
        images = images.to(rt.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last
        )
        masks = masks.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = net(images)
        loss = loss_fn(logits.float(), masks)  # losses in fp32: softmax/log under bf16 is lossy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # Accumulate on device; .item() every step would sync the GPU.
        loss_sum += loss.detach() * images.shape[0]
        seen += images.shape[0]
        if bar.n % 10 == 0 or bar.n == len(loader) - 1:
            rate = seen * rt.world / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
    seconds = time.perf_counter() - t0
    if rt.ddp:
        dist.all_reduce(loss_sum)
    return float(loss_sum) / max(1, len(data.train_ds)), seconds


def validate(
    net: torch.nn.Module, loader: Any, num_classes: int, ignore_index: int, rt: Runtime
) -> ConfusionMatrix:
    """Confusion matrix of the validation split; under DDP summed over the ranks' shards."""
    cm = ConfusionMatrix(num_classes, ignore_index, device=rt.device)
    net.eval()
    with torch.no_grad():
        for images, masks in loader:
            images = images.to(rt.device).contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                cm.update(net(images).float().argmax(1), masks.to(rt.device))
    if rt.ddp:
        dist.all_reduce(cm.matrix)  # every rank then holds the whole split's matrix
    return cm


# --- tracking (rank 0 only) ------------------------------------------------------------------


def start_tracking(
    tracking_uri: str,
    params: Params,
    data: TrainData,
    rt: Runtime,
    *,
    run_id: str | None,
    run_name: str | None,
    echo: Callable[[str], None],
) -> tracking.TrackedRun:
    """Start (or, with `run_id`, continue) the MLflow run; log params, inputs and the spec."""
    import mlflow

    ckpt_dir, spec = Path(params.train.checkpoint_dir), data.spec
    run = tracking.TrackedRun(
        tracking_uri,
        tracking.experiment_name(params.data.dataset, params.train.experiment),
        fallback_dir=ckpt_dir / "mlruns-fallback",
        run_id=run_id,
        run_name=run_name,
        tags={"roadseg.model": data.spec.model_name, "roadseg.loss": params.loss.name},
        echo=echo,
    )
    run.start()
    version = tracking.dataset_version(data.data_dir)
    # One input per split, so the runs table's Dataset column and filters work.
    run.log_inputs([tracking.dataset_input(f"{params.data.dataset}-{split}", version,
                                           str(data.data_dir), split)
                    for split in ("train", "val")])  # fmt: skip
    run.log_params(
        params.flat()
        | {
            "dataset_version": version,
            "git_commit": tracking.git_commit(Path(__file__).parent) or "unknown",
            "params_digest": params.digest(),
            "data_dir": str(data.data_dir),
            "num_train": data.num_train,
            "num_val": data.num_val,
            "image_mean": [round(m, 5) for m in spec.mean],
            "image_std": [round(s, 5) for s in spec.std],
            "world_size": rt.world,
            "device": rt.device.type,
        }
    )
    run.call(lambda: mlflow.log_dict(spec.to_dict(), "model_spec.json"))
    return run


def log_epoch(
    run: tracking.TrackedRun,
    record: dict[str, float],
    scores: dict[str, Any],
    state: TrainState,
    *,
    model: torch.nn.Module,
    data: TrainData,
    matrix: torch.Tensor,
    figures: bool,
) -> None:
    """An epoch's metrics (step = epoch number) and, with `figures`, its confusion matrix and
    sample predictions."""
    metrics = {k: v for k, v in record.items() if k != "epoch"}
    run.log_metrics(metrics | flat_scores(scores, "val") | {"best_val_miou": state.best_metric},
                    step=int(record["epoch"]))  # fmt: skip
    if figures:
        log_epoch_figures(run, model, data.spec, data.val_ds, matrix, int(record["epoch"]))


def log_best_model(
    run: tracking.TrackedRun, best_pt: Path, spec: ModelSpec, state: TrainState
) -> tuple[str | None, str | None]:
    """Log the best epoch's scores, confusion matrix and weights (`mlflow.pytorch`) once
    training is over; (model URI `models:/m-...`, model id), or Nones when logging failed."""
    import mlflow

    best = build_from_spec(spec)
    best.load_state_dict(load_checkpoint(best_pt)["model"])
    run.log_metrics(flat_scores(state.best_val, "best_val"), step=state.best_epoch)
    if state.best_val.get("confusion_matrix"):
        fig = confusion_figure(state.best_val["confusion_matrix"], spec.class_names)
        run.call(lambda: mlflow.log_figure(fig, "confusion_matrix/best.png"))
    info = run.call(lambda: log_model(best, spec))
    if info is None:
        return None, None
    run.set_tags({"roadseg.model_id": str(info.model_id)})
    return info.model_uri, info.model_id


def log_epoch_figures(
    run: tracking.TrackedRun,
    model: torch.nn.Module,
    spec: ModelSpec,
    val_ds: Any,
    matrix: torch.Tensor,
    epoch: int,
    n_samples: int = 4,
) -> None:
    """Confusion-matrix figure and a grid of sample predictions (image | truth | overlay)."""
    import matplotlib.pyplot as plt
    import mlflow

    fig = confusion_figure(matrix.cpu().tolist(), spec.class_names)
    run.call(lambda: mlflow.log_figure(fig, f"confusion_matrix/epoch_{epoch:03d}.png"))
    plt.close(fig)
    pairs = [val_ds.load(i) for i in range(min(n_samples, len(val_ds)))]
    grid = sample_grid(unwrap(model), spec, [p[0] for p in pairs], [p[1] for p in pairs])
    run.call(lambda: mlflow.log_image(grid, f"samples/epoch_{epoch:03d}.png"))
