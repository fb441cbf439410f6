"""Training set-up: processes and device, data, model wrapping, optimiser and schedule.

What `roadseg.train.loop.train_model` builds before its loop; each piece is a plain function so
tests and benchmarks can build the same objects.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Subset

from roadseg.config import Params
from roadseg.data.dataset import build_dataset, build_loader, class_stats, image_stats, list_split
from roadseg.data.remap import frequency_weights
from roadseg.losses import WEIGHTED_LOSSES, build_loss
from roadseg.models import PRETRAINED_NORMALIZATION
from roadseg.models.spec import ModelSpec


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then poly (power 0.9) or cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1 - t) ** 0.9 if schedule == "poly" else 0.5 * (1 + math.cos(math.pi * t))


# --- set-up ----------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Processes and device: plain, or DDP under torchrun (which sets RANK/WORLD_SIZE)."""

    device: torch.device
    ddp: bool = False
    rank: int = 0
    world: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0  # only rank 0 logs and writes checkpoints

    def autocast(self) -> AbstractContextManager:
        # bf16 autocast on CUDA: no loss scaling needed, unlike fp16.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


def setup_runtime(device: str | torch.device | None = None) -> Runtime:
    """Join the DDP process group when launched by torchrun; pick this rank's device."""
    ddp = dist.is_available() and dist.is_torchelastic_launched()
    rank, world = 0, 1
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if device is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # free speed for the fp32 parts
    return Runtime(device, ddp, rank, world)


@dataclass
class TrainData:
    """The datasets and loaders of one training, with the spec their normalisation comes from."""

    spec: ModelSpec
    train_ds: Any
    val_ds: Any
    val_loader: Any
    train_sampler: DistributedSampler | None
    class_weights: torch.Tensor | None
    steps_per_epoch: int
    data_dir: Path
    num_train: int
    num_val: int


@dataclass
class InitModel:
    """The weights and spec of `train.init_from`, the model a run is fine-tuned from."""

    state: dict[str, torch.Tensor]
    spec: ModelSpec
    uri: str

    def apply(self, model: torch.nn.Module, spec: ModelSpec) -> None:
        """Load the weights into `model` (built from `spec`), or a ValueError naming what differs."""
        for field in ("model_name", "num_classes", "in_channels", "base_channels"):
            ours, theirs = getattr(spec, field), getattr(self.spec, field)
            if ours != theirs:
                raise ValueError(
                    f"train.init_from {self.uri}: {field} is {theirs}, this run's {ours}"
                )
        model.load_state_dict(self.state)


def load_init_model(uri: str | None, tracking_uri: str | None) -> InitModel | None:
    """The model `train.init_from` names (None when unset); MLflow URIs read `tracking_uri`."""
    if not uri:
        return None
    from roadseg.models.io import load_model

    if tracking_uri and uri.startswith(("models:/", "runs:/")):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    model, spec, _ = load_model(uri)
    return InitModel({k: v.detach().clone() for k, v in model.state_dict().items()}, spec, uri)


def initial_model(spec: ModelSpec, *, resumed: bool, init: InitModel | None) -> torch.nn.Module:
    """The network to train: with `init`'s weights (fine-tuning), else with a pretrained
    encoder's ImageNet weights; a resumed run loads its checkpoint over it afterwards."""
    from roadseg.models.io import build_from_spec

    model = build_from_spec(spec, pretrained=not resumed and init is None)
    if init is not None:
        init.apply(model, spec)
    return model


def build_data(
    params: Params, data_dir: Path, rt: Runtime, *, spec: ModelSpec | None = None,
    init: InitModel | None = None,
) -> TrainData:  # fmt: skip
    """Datasets, the validation loader (this rank's shard) and class weights.

    `spec` is the resumed run's (its mean/std, so resuming changes nothing); without one, the
    normalisation is the model's `init` was trained with (fine-tuning), else a pretrained
    encoder's, else the training images' statistics.
    """
    tp = params.train
    train_samples = list_split(data_dir, params, "train")
    val_samples = list_split(data_dir, params, "val")
    if spec is None:
        norm = (init.spec.mean, init.spec.std) if init else None
        name = params.model.name_for(params.data.dataset)
        mean, std = norm or PRETRAINED_NORMALIZATION.get(name) or image_stats(train_samples)
        spec = ModelSpec.from_params(params, mean=mean, std=std, loss=params.loss.name)
    weights = None
    if params.loss.name in WEIGHTED_LOSSES:
        stats = class_stats(data_dir, params, train_samples)
        power = params.loss.class_weight_power
        weights = torch.tensor(stats["weights"] if power == 0.5 else
                               frequency_weights(stats["frequencies"], power))  # fmt: skip
    norm = {"mean": list(spec.mean), "std": list(spec.std)}
    train_ds = build_dataset(data_dir, params, "train", train=True, samples=train_samples, **norm)
    val_ds = build_dataset(data_dir, params, "val", train=False, samples=val_samples, **norm)
    # Validation is sharded without padding (DistributedSampler would repeat samples).
    val_shard = Subset(val_ds, list(range(rt.rank, len(val_ds), rt.world)))
    val_loader = build_loader(val_shard, batch_size=tp.batch_size,
                              num_workers=params.data.num_workers, shuffle=False)  # fmt: skip
    sampler = None
    if rt.ddp:
        sampler = DistributedSampler(train_ds, rt.world, rt.rank, shuffle=True, seed=tp.seed)
    steps = math.ceil(len(sampler or train_ds) / tp.batch_size)
    return TrainData(spec, train_ds, val_ds, val_loader, sampler, weights, steps, data_dir,
                     len(train_samples), len(val_samples))  # fmt: skip


def build_optimizer(model: torch.nn.Module, tp: Any, *, steps_per_epoch: int) -> tuple[Any, Any]:
    """AdamW and its per-step schedule: linear warm-up, then poly or cosine decay. A pretrained
    encoder (`model.encoder`) is its own parameter group: lr x `encoder_lr_mult`, and zero for
    the first `freeze_encoder_epochs` (zero, not requires_grad=False, so DDP sees every
    parameter used at every step)."""
    encoder = getattr(model, "encoder", None)
    enc = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in enc], "lr": tp.lr}]
    if enc:
        groups.append({"params": list(encoder.parameters()), "lr": tp.lr * tp.encoder_lr_mult})
    optimizer = torch.optim.AdamW(groups, lr=tp.lr, weight_decay=tp.weight_decay)
    total, warmup = tp.epochs * steps_per_epoch, tp.warmup_epochs * steps_per_epoch
    frozen = tp.freeze_encoder_epochs * steps_per_epoch

    def schedule(s: int) -> float:
        return lr_factor(s, total, warmup, tp.schedule)

    def encoder_schedule(s: int) -> float:
        return 0.0 if s < frozen else schedule(s)

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [schedule, encoder_schedule][: len(groups)]
    )
    return optimizer, scheduler


def freeze_encoder_statistics(model: torch.nn.Module, tp: Any) -> None:
    """Keep a pretrained encoder's batch-norm layers in eval mode while the rest trains: their
    ImageNet statistics stay (batches of a few images estimate them badly); call after
    `.train()`. The affine weights still learn."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and tp.freeze_encoder_bn:
        for module in encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def freeze_encoder_gradients(model: torch.nn.Module, tp: Any, epoch: int, *, ddp: bool) -> bool:
    """While the encoder's learning rate is zero (`freeze_encoder_epochs`), compute no gradients
    for it: the backward pass then stops at the decoder (a step at 288x512 costs about half on
    the CPU). Not under DDP, whose reducer expects the gradients of every parameter it was given;
    there the rate alone keeps the weights. Returns whether the encoder is frozen this epoch."""
    encoder = getattr(model, "encoder", None)
    frozen = encoder is not None and epoch < tp.freeze_encoder_epochs
    if encoder is not None and not ddp:
        encoder.requires_grad_(not frozen)
    return frozen


def wrap_for_training(model: torch.nn.Module, rt: Runtime, *, compile_: bool) -> torch.nn.Module:
    """The module the loop calls: DDP (with SyncBatchNorm on GPUs) and/or compiled; `model`
    itself stays the plain module that is checkpointed and logged."""
    net = model
    if rt.ddp:
        if rt.device.type == "cuda":  # batch statistics over the global batch, not each shard
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return torch.compile(net) if compile_ else net


def build_loss_for(params: Params, weights: torch.Tensor | None) -> torch.nn.Module:
    return build_loss(params.loss, num_classes=params.data.num_classes,
                      ignore_index=params.data.ignore_index, class_weights=weights)  # fmt: skip
