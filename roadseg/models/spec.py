"""`ModelSpec`: everything needed to run a trained model on raw images, stored with every saved
model (checkpoints, MLflow models, Bentos) so that evaluation and serving preprocess as training
did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from roadseg.config import Params


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to run a trained model on raw images; stored with every saved model."""

    model_name: str
    num_classes: int
    in_channels: int
    base_channels: int
    image_size: tuple[int, int]  # (H, W) the network saw during training
    mean: tuple[float, float, float]  # per channel, images scaled to [0, 1]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    dataset: str = "bdd100k"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. loss name, params digest

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes or len(self.colors) != self.num_classes:
            raise ValueError(
                f"ModelSpec: {self.num_classes} classes but {len(self.class_names)} names "
                f"and {len(self.colors)} colours"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"ModelSpec: image_size must be (H, W) > 0, got {self.image_size}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("ModelSpec: mean and std need one value per input channel")
        if min(self.std) <= 0:
            raise ValueError(f"ModelSpec: std must be positive, got {self.std}")

    @classmethod
    def from_params(
        cls, params: Params, *, mean: Sequence[float], std: Sequence[float], **extra: Any
    ) -> ModelSpec:
        table = params.data.class_table
        return cls(
            model_name=params.model.name_for(params.data.dataset),
            num_classes=params.data.num_classes,
            in_channels=params.model.in_channels,
            base_channels=params.model.base_channels,
            image_size=tuple(params.train.image_size),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            class_names=tuple(c.name for c in table),
            colors=tuple(tuple(c.color) for c in table),
            ignore_index=params.data.ignore_index,
            dataset=params.data.dataset,
            extra=dict(extra),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["colors"] = [list(c) for c in self.colors]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        required = ("model_name", "num_classes", "in_channels", "base_channels", "image_size")
        missing = [k for k in (*required, "mean", "std", "class_names", "colors") if k not in d]
        if missing:
            raise ValueError(f"model spec is missing {missing}")
        known["image_size"] = tuple(int(x) for x in known["image_size"])
        known["mean"] = tuple(float(x) for x in known["mean"])
        known["std"] = tuple(float(x) for x in known["std"])
        known["class_names"] = tuple(known["class_names"])
        known["colors"] = tuple(tuple(int(x) for x in c) for c in known["colors"])
        return cls(**known)
