"""Typed parameters: `params.yaml` loaded into frozen pydantic models, unknown keys rejected.

Library code takes these objects; only the CLI and component entry points read files::

    params = load_params("params.yaml", overrides=["train.epochs=2"])
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roadseg.overrides import ParamsError as ParamsError  # re-exported: callers catch it here
from roadseg.overrides import apply_overrides

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"

# The one list of loss and model names: params validation, the CLI's help, the pipeline's default
# variants and `roadseg.losses.LOSSES` / `roadseg.models` (checked by tests) all follow these.
LossName = Literal["wce", "ohem", "dice", "dice_ce", "iou"]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)
ModelName = Literal["unet", "baseline", "unet_effnet_lite0"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
# What runs the network in the service (roadseg.serve.backends); ROADSEG_BACKEND overrides it.
# onnxruntime_int8 runs the packaged model.int8.onnx (`roadseg package --int8 DATA_DIR`).
BackendName = Literal["torch", "onnxruntime", "onnxruntime_int8"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClassDef(_Frozen):
    name: str
    color: tuple[int, int, int]

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"colour {v} has a channel outside 0-255")
        return v


class DataParams(_Frozen):
    dataset: Literal["bdd100k", "kitti_road"] = "bdd100k"
    raw_dir: str = "data/bdd100k"
    source_dir: str = "data/synthetic"
    remapped_dir: str = "data/remapped"
    ignore_index: int = Field(255, ge=0, le=255)
    num_workers: int = Field(2, ge=0)
    source_classes: tuple[ClassDef, ...]
    mapping: dict[int, int]
    classes: tuple[ClassDef, ...]
    kitti_classes: tuple[ClassDef, ...]

    @model_validator(mode="after")
    def _mapping_is_total_and_in_range(self) -> DataParams:
        n_src, n_dst = len(self.source_classes), len(self.classes)
        missing = sorted(set(range(n_src)) - set(self.mapping))
        if missing:
            raise ValueError(f"data.mapping is not total: source ids {missing} are not mapped")
        extra = sorted(set(self.mapping) - set(range(n_src)))
        if extra:
            raise ValueError(
                f"data.mapping maps source ids {extra} that do not exist (0-{n_src - 1})"
            )
        bad = {
            s: d for s, d in self.mapping.items() if d != self.ignore_index and not 0 <= d < n_dst
        }
        if bad:
            raise ValueError(
                f"data.mapping maps beyond the {n_dst} merged classes: {bad} "
                f"(allowed: 0-{n_dst - 1} or {self.ignore_index} for ignore)"
            )
        return self

    @property
    def class_table(self) -> tuple[ClassDef, ...]:
        """The classes the model predicts for the configured dataset."""
        return self.kitti_classes if self.dataset == "kitti_road" else self.classes

    @property
    def num_classes(self) -> int:
        return len(self.class_table)

    def lookup_table(self) -> np.ndarray:
        """256-entry uint8 LUT: source id -> merged id; unknown ids and ignore stay ignore."""
        lut = np.full(256, self.ignore_index, dtype=np.uint8)
        for src, dst in self.mapping.items():
            lut[src] = dst
        return lut


class SynthParams(_Frozen):
    out_dir: str = "data/synthetic"
    train: int = Field(24, ge=0)
    val: int = Field(8, ge=0)
    test: int = Field(4, ge=0)
    height: int = Field(180, ge=32)
    width: int = Field(320, ge=32)
    seed: int = 0


class ValidateParams(_Frozen):
    report_dir: str = "reports/validation"
    max_ignore_fraction: float = Field(1.0, gt=0.0, le=1.0)


class RemapParams(_Frozen):
    link_images: bool = True


class AugmentParams(_Frozen):
    scale_range: tuple[float, float] = (0.5, 1.5)
    hflip_prob: float = Field(0.5, ge=0.0, le=1.0)
    class_uniform_prob: float = Field(0.0, ge=0.0, le=1.0)  # crops around a class drawn uniformly
    copy_paste_prob: float = Field(0.0, ge=0.0, le=1.0)  # paste these classes (data/copy_paste.py)
    copy_paste_classes: tuple[str, ...] = ("pole", "traffic light", "traffic sign", "person/rider")
    # Photometric, on the image only (roadseg.data.dataset.photometric): factors drawn from
    # [1 - x, 1 + x], a hue shift from [-hue, hue] of the colour circle, a Gaussian blur.
    brightness: float = Field(0.2, ge=0.0, lt=1.0)
    contrast: float = Field(0.2, ge=0.0, lt=1.0)
    saturation: float = Field(0.2, ge=0.0, lt=1.0)
    hue: float = Field(0.02, ge=0.0, le=0.5)
    blur_prob: float = Field(0.1, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.3, 1.2)


class ModelParams(_Frozen):
    # BDD100k: the U-Net over the ImageNet-pretrained encoder (it wins on real images at equal
    # CPU time, docs/data-science/real-streets.md); `unet` is the plain U-Net from scratch.
    name: ModelName = "unet_effnet_lite0"
    # The KITTI Road binary model (data.dataset: kitti_road); None: `name`, whatever the dataset.
    kitti_name: ModelName | None = "unet"
    base_channels: int = Field(16, ge=1)
    in_channels: int = Field(3, ge=1)

    def name_for(self, dataset: str) -> str:
        """The network trained on `data.dataset`."""
        return (self.kitti_name or self.name) if dataset == "kitti_road" else self.name


class LossParams(_Frozen):
    name: LossName = "dice_ce"
    ohem_top_k: float = Field(0.25, gt=0.0, le=1.0)
    dice_weight: float = Field(0.5, ge=0.0)
    ce_weight: float = Field(0.5, ge=0.0)
    smooth: float = Field(1.0, ge=0.0)
    class_weight_power: float = Field(0.5, ge=0.0)


class TrainParams(_Frozen):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    image_size: tuple[int, int] = (96, 160)
    lr: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: int = Field(1, ge=0)
    schedule: Literal["poly", "cosine"] = "poly"
    # Models over a pretrained encoder (the others have none): its learning rate is lr times
    # this; zero for the first freeze_encoder_epochs (the decoder learns first); its batch-norm
    # statistics kept as pretrained when batches are too small to estimate them.
    encoder_lr_mult: float = Field(0.1, gt=0.0, le=1.0)
    freeze_encoder_epochs: int = Field(0, ge=0)
    freeze_encoder_bn: bool = True
    # Fine-tuning: start from this model's weights (a model URI or checkpoint of the same
    # architecture and classes), with its input normalisation; None trains from the start.
    init_from: str | None = None
    early_stopping_patience: int = Field(20, ge=1)
    seed: int = 0
    compile: bool = False
    sample_every: int = Field(5, ge=1)
    checkpoint_dir: str = "artifacts/checkpoints"
    experiment: str | None = None


class EvaluateParams(_Frozen):
    split: str = "val"
    batch_size: int = Field(8, ge=1)


class RegisterParams(_Frozen):
    model_name: str = "roadseg-unet"  # BDD100k
    # KITTI Road models go under their own name: a KITTI champion never displaces a BDD100k one.
    kitti_model_name: str = "roadseg-kitti-road"
    min_miou: float = Field(0.05, ge=0.0, le=1.0)
    class_iou_floor: float = Field(0.0, ge=0.0, le=1.0)
    margin: float = Field(0.005, ge=0.0)
    # `roadseg promote` (roadseg/release/promote.py) also requires shadow evidence on live traffic,
    # recorded on the version by the service's shadow challenger (0: not required).
    shadow_min_images: int = Field(0, ge=0)
    shadow_min_agreement: float = Field(0.0, ge=0.0, le=1.0)

    def model_name_for(self, dataset: str) -> str:
        """The registered model name of `data.dataset`."""
        return self.kitti_model_name if dataset == "kitti_road" else self.model_name


class ShadowParams(_Frozen):
    """The shadow challenger (roadseg/serve/shadow.py): a share of the served images also run
    through a second model after the answer is sent; env ROADSEG_SHADOW_SHARE / _MODEL_URI."""

    share: float = Field(0.0, ge=0.0, le=1.0)  # 0: off
    model_uri: str | None = None  # default: models:/<served model's name>@challenger
    queue: int = Field(4, ge=1)  # images waiting for the challenger; beyond: dropped, counted
    log_every_s: float = Field(300.0, gt=0)  # summary to the challenger's MLflow version


class ServeParams(_Frozen):
    port: int = Field(3000, ge=1, le=65535)
    max_request_bytes: int = Field(50 * 2**20, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_zip_entries: int = Field(256, ge=1)
    max_zip_uncompressed_bytes: int = Field(200 * 2**20, ge=1)
    max_video_frames: int = Field(900, ge=1)
    max_video_seconds: float = Field(60, gt=0)
    # Per request, across parts, ZIP entries, JSON images and video frames (roadseg/serve/decoding.py).
    max_request_pixels: int = Field(1_000_000_000, ge=1)
    max_jpeg_scans: int = Field(100, ge=1)  # a progressive JPEG has ~10; each scan is a full pass
    header_timeout_seconds: float = Field(10, gt=0)  # connection open -> headers complete
    body_timeout_seconds: float = Field(15, gt=0)  # longest wait for the next body chunk
    max_body_seconds: float = Field(120, gt=0)  # whole body, however it trickles
    send_timeout_seconds: float = Field(30, gt=0)  # a response the client stops reading
    # Request bodies being served at once, per worker: a 50 MiB JSON body costs ~5x its size while
    # served, so many at once would reach gigabytes; beyond it new requests get 429 + Retry-After.
    max_inflight_bytes: int = Field(128 * 2**20, ge=1)
    batch_size: int = Field(8, ge=1)
    # eager PyTorch, or the packaged model.onnx / model.int8.onnx in ONNX Runtime (docs: backends)
    backend: BackendName = "torch"
    # Threads of one inference, torch's or ONNX Runtime's (ROADSEG_INTRA_OP_THREADS overrides);
    # None: the pod's CPU limit (roadseg.serve.backends.cpu_limit). Fewer leave cores to the
    # request threads that decode, resize, upsample and encode beside it (docs: Serving backends).
    intra_op_threads: int | None = Field(None, ge=1)
    shadow: ShadowParams = ShadowParams()  # docs: Shadow challenger
    overlay_alpha: float = Field(0.5, ge=0.0, le=1.0)
    # SIGTERM: new connections refused, requests in flight finish within this, then the worker
    # stops (the Deployment's terminationGracePeriodSeconds must exceed it plus the preStop pause).
    drain_seconds: int = Field(30, ge=1)
    # The network in a child process of each worker (roadseg/serve/modelproc.py): when it dies
    # mid-batch, that batch's requests get 503 + Retry-After and the next batch restarts it.
    model_process: bool = True


class StreamParams(_Frozen):
    """Limits of the `/stream` WebSocket (roadseg/serve/stream.py)."""

    max_frame_bytes: int = Field(8 * 2**20, ge=1)  # a bigger frame closes with 1009
    max_frame_pixels: int = Field(8_300_000, ge=1)  # 4K; a bigger frame gets a text error
    max_fps: float = Field(30, gt=0)  # frames arriving faster are dropped, newest kept
    max_seconds: float = Field(3600, gt=0)  # connection duration, then close 1008
    max_connections: int = Field(16, ge=1)  # per pod (worker); beyond: close 1013
    auth_timeout_seconds: float = Field(10, gt=0)  # wait for a first {"api_key"} message
    idle_seconds: float = Field(60, gt=0)  # no frame for this long: close 1008


class DriftParams(_Frozen):
    threshold: float = Field(0.5, gt=0.0, le=1.0)
    stattest_threshold: float = Field(0.05, gt=0.0, lt=1.0)
    log_dir: str = "monitoring"
    # What `roadseg drift` does on drift besides the alert: `retrain` starts the training
    # pipeline when the dataset changed since the champion's (roadseg/monitor/retrain.py).
    on_drift: Literal["alert", "retrain"] = "alert"
    # After a drift-started run, no other starts for this long, whatever the episode.
    cooldown_hours: float = Field(24.0, ge=0.0)


class PipelineParams(_Frozen):
    loss_variants: tuple[LossName, ...] = ("wce", "ohem", "dice", "dice_ce")
    # KITTI Road is binary: the IoU loss (the original project's) by default.
    kitti_loss_variants: tuple[LossName, ...] = ("iou",)
    host: str | None = None  # Kubeflow Pipelines endpoint: `roadseg pipeline submit` without --host

    def variants_for(self, dataset: str) -> tuple[str, ...]:
        """The loss variants a pipeline run of `data.dataset` trains by default."""
        return self.kitti_loss_variants if dataset == "kitti_road" else self.loss_variants


class PackageParams(_Frozen):
    log_archive: bool = True  # also store it in the version's MLflow run (the image build reads it)
    # `roadseg package --int8 DATA_DIR` (roadseg/release/int8.py): model.int8.onnx ships only when
    # it loses less than this validation mIoU; calibrated on at most this many training images.
    int8_max_miou_drop: float = Field(0.01, gt=0.0, le=1.0)
    int8_calibration_images: int = Field(64, ge=1)
    # The pipeline's package step tries it on the run's remapped data (`roadseg follow --int8 DIR`).
    int8: bool = False


class DeployParams(_Frozen):
    """The pipeline's deploy step (roadseg/release/deploy.py); names match k8s/base/deploy and serving."""

    enabled: bool = False  # cluster runs only; a local run always skips the deploy
    namespace: str = "roadseg"
    deployment: str = "roadseg-service"
    container: str = "bento"
    service_url: str = "http://roadseg-service.roadseg.svc.cluster.local:3000"
    image_repository: str = "ghcr.io/roadseg/roadseg-service"
    build_job_template: str = "roadseg-buildkit-job"
    build_timeout_s: int = Field(3600, ge=1)
    rollout_timeout_s: int = Field(900, ge=1)


class Params(_Frozen):
    data: DataParams
    synth: SynthParams = SynthParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    remap: RemapParams = RemapParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    loss: LossParams = LossParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    serve: ServeParams = ServeParams()
    stream: StreamParams = StreamParams()
    drift: DriftParams = DriftParams()
    pipeline: PipelineParams = PipelineParams()
    package: PackageParams = PackageParams()
    deploy: DeployParams = DeployParams()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict with the same keys as params.yaml."""
        return self.model_dump(mode="json", by_alias=True)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> leaf values (lists kept whole), e.g. for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = node

        walk("", self.to_dict())
        return out

    def digest(self) -> str:
        """Stable short hash of the resolved params (logged, tagged and used as a cache key)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_ALIASED = {"validate": "validate_", "register": "register_"}


def _is_optional_leaf(path: list[str]) -> bool:
    """Keys that the model defines with a default but that a params file may omit."""
    section = _ALIASED.get(path[0], path[0])
    field = Params.model_fields.get(section)
    if field is None or len(path) != 2:
        return False
    sub = field.annotation
    return hasattr(sub, "model_fields") and path[1] in sub.model_fields


def parse_params(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Validate a raw params dict (plus overrides) into `Params`, with readable errors."""
    if not isinstance(raw, dict):
        raise ParamsError("params must be a mapping of sections")
    merged = apply_overrides(raw, overrides, optional_leaf=_is_optional_leaf)
    for field_name, field in Params.model_fields.items():
        if field_name != "data":
            merged.setdefault(field.alias or field_name, {})
    try:
        return Params.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            kind = "unknown params key" if err["type"] == "extra_forbidden" else "invalid"
            lines.append(f"{kind} {loc!r}: {err['msg']}" if loc else err["msg"])
        raise ParamsError("; ".join(lines)) from None


def load_params(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Params:
    """Read a params YAML (default: the repository's params.yaml) and apply `key=value` overrides."""
    p = Path(path) if path else DEFAULT_PARAMS
    if not p.is_file():
        raise ParamsError(f"params file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{p}: not valid YAML ({e})") from e
    return parse_params(raw, overrides)
