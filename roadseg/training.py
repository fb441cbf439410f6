"""Training a segmentation model, readable top to bottom in `train_model`.

    roadseg train --data-dir data/bdd100k --model unet --loss dice_ce --set train.epochs=2
    torchrun --nproc_per_node=4 -m roadseg.cli train --data-dir data/bdd100k   # DDP, one GPU each

CPU, one GPU, or several GPUs under torchrun (DDP: each rank sees a shard, the validation
confusion matrices are summed across ranks, only rank 0 logs and writes checkpoints).
A checkpoint is written after every epoch (`last.pt`, and `best.pt` by val mIoU);
`resume=True` continues from `last.pt` and ends at the same epoch count, with the same weights,
as an uninterrupted run: data order and augmentation are seeded by (seed, epoch), not by
global RNG state.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Subset
from tqdm import tqdm

from roadseg import tracking
from roadseg.config import Params
from roadseg.data.dataset import build_dataset, build_loader, class_stats, image_stats, list_split
from roadseg.evaluation import confusion_figure, flat_scores, sample_grid
from roadseg.losses import WEIGHTED_LOSSES, build_loss
from roadseg.metrics import ConfusionMatrix
from roadseg.modelio import build_from_spec, load_checkpoint, log_model, save_checkpoint, unwrap
from roadseg.serving import ModelSpec


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`roadseg train --json`): the best scores without the confusion matrix."""
        out = asdict(self) | {"checkpoint_dir": str(self.checkpoint_dir)}
        out["best_val"] = {k: v for k, v in self.best_val.items() if k != "confusion_matrix"}
        return out


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then poly (power 0.9) or cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1 - t) ** 0.9 if schedule == "poly" else 0.5 * (1 + math.cos(math.pi * t))


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
    tp, data_dir = params.train, Path(data_dir)
    ckpt_dir = Path(tp.checkpoint_dir)

    # --- processes and device: plain, or DDP under torchrun (which sets RANK/WORLD_SIZE) ---------
    ddp = dist.is_available() and dist.is_torchelastic_launched()
    rank, world = 0, 1
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    master = rank == 0
    if device is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # free speed for the fp32 parts
    seed_everything(tp.seed)  # same seed on every rank: identical initial weights

    # --- data ---------------------------------------------------------------------------------
    train_samples = list_split(data_dir, params, "train")
    val_samples = list_split(data_dir, params, "val")
    last = ckpt_dir / "last.pt"
    state = load_checkpoint(last) if resume and last.is_file() else None
    if resume and state is None and master:
        echo(f"no checkpoint at {last}; starting from scratch")
    if state is not None:  # reuse the stats the run started with, so resuming changes nothing
        spec = ModelSpec.from_dict(state["spec"])
        if state.get("params_digest") != params.digest():
            echo(
                f"warning: params differ from those of {last} (digest {state.get('params_digest')})"
            )
    else:
        mean, std = image_stats(train_samples)
        spec = ModelSpec.from_params(params, mean=mean, std=std, loss=params.loss.name)
    weights = None
    if params.loss.name in WEIGHTED_LOSSES:
        weights = torch.tensor(class_stats(data_dir, params, train_samples)["weights"])
    train_ds = build_dataset(data_dir, params, "train", train=True, mean=list(spec.mean),
                             std=list(spec.std), samples=train_samples)  # fmt: skip
    val_ds = build_dataset(data_dir, params, "val", train=False, mean=list(spec.mean),
                           std=list(spec.std), samples=val_samples)  # fmt: skip
    # Validation is sharded without padding (DistributedSampler would repeat samples).
    val_shard = Subset(val_ds, list(range(rank, len(val_ds), world)))
    val_loader = build_loader(val_shard, batch_size=tp.batch_size,
                              num_workers=params.data.num_workers, shuffle=False)  # fmt: skip
    train_sampler = (
        DistributedSampler(train_ds, world, rank, shuffle=True, seed=tp.seed) if ddp else None
    )
    steps_per_epoch = math.ceil(len(train_sampler or train_ds) / tp.batch_size)

    # --- model, loss, optimiser, schedule -----------------------------------------------------
    model = build_from_spec(spec).to(device, memory_format=torch.channels_last)
    loss_fn = build_loss_for(params, weights).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    total_steps = tp.epochs * steps_per_epoch
    warmup = tp.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, tp.schedule)
    )
    start_epoch, best_miou, best_epoch, bad_epochs = 0, -1.0, 0, 0
    best_val: dict[str, Any] = {}
    history: list[dict[str, float]] = []
    run_id = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best_miou, best_epoch = (
            state["epoch"],
            state["best_metric"],
            state["best_epoch"],
        )
        bad_epochs, best_val = state["bad_epochs"], state["best_val"]
        history, run_id = state["history"], state.get("run_id")
        if master:
            echo(f"resuming from {last}: {start_epoch} of {tp.epochs} epochs done")
    train_model_ = model
    if ddp:
        if device.type == "cuda":  # batch statistics over the global batch, not each shard
            train_model_ = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        train_model_ = torch.nn.parallel.DistributedDataParallel(train_model_, device_ids=ids)
    if tp.compile:
        train_model_ = torch.compile(train_model_)
    # bf16 autocast on CUDA: no loss scaling needed, unlike fp16.
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else nullcontext
    )

    # --- tracking (rank 0 only) ---------------------------------------------------------------
    run = None
    if master and tracking_uri:
        import mlflow

        run = tracking.TrackedRun(
            tracking_uri,
            tracking.experiment_name(params.data.dataset, tp.experiment),
            fallback_dir=ckpt_dir / "mlruns-fallback",
            run_id=run_id,
            run_name=run_name,
            tags={"roadseg.model": params.model.name, "roadseg.loss": params.loss.name},
            echo=echo,
        )
        run_id = run.start()
        version = tracking.dataset_version(data_dir)
        # One input per split, so the runs table's Dataset column and filters work.
        run.log_inputs([tracking.dataset_input(f"{params.data.dataset}-{split}", version,
                                               str(data_dir), split)
                        for split in ("train", "val")])  # fmt: skip
        run.log_params(
            params.flat()
            | {
                "dataset_version": version,
                "git_commit": tracking.git_commit(Path(__file__).parent) or "unknown",
                "params_digest": params.digest(),
                "data_dir": str(data_dir),
                "num_train": len(train_samples),
                "num_val": len(val_samples),
                "image_mean": [round(m, 5) for m in spec.mean],
                "image_std": [round(s, 5) for s in spec.std],
                "world_size": world,
                "device": device.type,
            }
        )
        run.call(lambda: mlflow.log_dict(spec.to_dict(), "model_spec.json"))

    # --- the loop -----------------------------------------------------------------------------
    epoch = start_epoch
    for epoch in range(start_epoch, tp.epochs):
        if max_epochs_this_run is not None and epoch - start_epoch >= max_epochs_this_run:
            break
        if bad_epochs >= tp.early_stopping_patience:
            if master:
                echo(f"early stopping: no val mIoU gain for {bad_epochs} epochs")
            break
        train_ds.set_epoch(epoch)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        loader = build_loader(train_ds, batch_size=tp.batch_size, num_workers=params.data.num_workers,
                              shuffle=True, seed=tp.seed, epoch=epoch, sampler=train_sampler)  # fmt: skip
        train_model_.train()
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=device)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tp.epochs}", disable=not (progress and master))
        for images, masks in bar:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            masks = masks.to(device, non_blocking=True)
            with autocast():
                logits = train_model_(images)
            loss = loss_fn(logits.float(), masks)  # losses in fp32: softmax/log under bf16 is lossy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Accumulate on device; .item() every step would sync the GPU.
            loss_sum += loss.detach() * images.shape[0]
            seen += images.shape[0]
            if bar.n % 10 == 0 or bar.n == len(loader) - 1:
                rate = seen * world / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.1f}")
        train_time = time.perf_counter() - t0
        if ddp:
            dist.all_reduce(loss_sum)
        train_loss = float(loss_sum) / max(1, len(train_ds))

        # Validation at the training size; full-resolution scores come from `roadseg evaluate`.
        cm = ConfusionMatrix(spec.num_classes, params.data.ignore_index, device=device)
        train_model_.eval()
        with torch.no_grad():
            for images, masks in val_loader:
                images = images.to(device).contiguous(memory_format=torch.channels_last)
                with autocast():
                    cm.update(train_model_(images).float().argmax(1), masks.to(device))
        if ddp:
            dist.all_reduce(cm.matrix)  # every rank then holds the whole split's matrix
        scores = cm.compute(list(spec.class_names))
        miou = scores["miou"] or 0.0
        improved = miou > best_miou
        if improved:
            best_miou, best_epoch, bad_epochs = miou, epoch + 1, 0
            best_val = scores | {"confusion_matrix": cm.matrix.cpu().tolist()}
        else:
            bad_epochs += 1
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_miou": miou,
                  "lr": scheduler.get_last_lr()[0],
                  "images_per_s": len(train_ds) / train_time}  # fmt: skip
        history.append(record)

        if master:
            echo(f"epoch {epoch + 1}/{tp.epochs}: train loss {train_loss:.4f}  val mIoU "
                 f"{miou:.4f}  best {best_miou:.4f} (epoch {best_epoch})")  # fmt: skip
            if run is not None:
                run.log_metrics({k: v for k, v in record.items() if k != "epoch"}
                                | flat_scores(scores, "val") | {"best_val_miou": best_miou},
                                step=epoch + 1)  # fmt: skip
                if (epoch + 1) % tp.sample_every == 0 or epoch + 1 == tp.epochs:
                    log_epoch_figures(run, model, spec, val_ds, cm.matrix, epoch + 1)
            # Checkpoints after tracking, never depending on it: last.pt then best.pt.
            ckpt = {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "best_metric": best_miou,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "best_val": best_val,
                "history": history,
                "rng": rng_state(),
                "spec": spec.to_dict(),
                "params_digest": params.digest(),
                "run_id": run_id,
            }
            save_checkpoint(last, ckpt)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", {k: ckpt[k] for k in
                                ("model", "epoch", "best_metric", "best_val", "spec", "run_id")})  # fmt: skip
    epochs_run = history[-1]["epoch"] if history else start_epoch
    finished = epochs_run >= tp.epochs or bad_epochs >= tp.early_stopping_patience

    # --- the best model, logged once training is over ----------------------------------------
    model_uri = model_id = None
    if run is not None:
        if finished and log_final_model and (ckpt_dir / "best.pt").is_file():
            best = build_from_spec(spec)
            best.load_state_dict(load_checkpoint(ckpt_dir / "best.pt")["model"])
            run.log_metrics(flat_scores(best_val, "best_val"), step=best_epoch)
            if best_val.get("confusion_matrix"):
                fig = confusion_figure(best_val["confusion_matrix"], spec.class_names)
                run.call(lambda: mlflow.log_figure(fig, "confusion_matrix/best.png"))
            info = run.call(lambda: log_model(best, spec))
            if info is not None:
                model_uri, model_id = info.model_uri, info.model_id
                run.set_tags({"roadseg.model_id": str(model_id)})
        run.end("FINISHED" if finished else "KILLED")
    if ddp:
        dist.destroy_process_group()
    return TrainResult(
        run_id=run_id if run is None else run.run_id,
        model_uri=model_uri,
        model_id=model_id,
        best_val=best_val,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        checkpoint_dir=ckpt_dir,
        tracking_uri=None if run is None else run.tracking_uri,
        fell_back=bool(run and run.fell_back),
        history=history,
    )


def build_loss_for(params: Params, weights: torch.Tensor | None) -> torch.nn.Module:
    return build_loss(params.loss, num_classes=params.data.num_classes,
                      ignore_index=params.data.ignore_index, class_weights=weights)  # fmt: skip


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
