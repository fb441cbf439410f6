"""The optional int8 variant at packaging (`roadseg package --int8 DATA_DIR`): quantise the
packaged `model.onnx` (roadseg.models.quantize), calibrated on the training split of DATA_DIR,
score float and int8 on its validation split with the evaluation's own code, and keep
`model.int8.onnx` only when the gate passes. Never raises: the float model ships regardless.

    path, labels = int8_variant(onnx_file, spec, data_dir, params, tmp)   # path None: not shipped

Labels: `int8` (shipped | rejected | failed), `int8_reason`, `float_miou`, `int8_miou` (the
validation mIoU of each, as `roadseg evaluate` computes it at each image's full resolution).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from roadseg.config import Params
from roadseg.data.bdd100k import read_image
from roadseg.data.dataset import list_split
from roadseg.evaluate.segmentation import evaluate_model
from roadseg.inference.predict import prepare
from roadseg.models.onnx import INPUT_NAME
from roadseg.models.quantize import ONNX_INT8_FILE, int8_gate, quantize_int8
from roadseg.models.spec import ModelSpec

log = logging.getLogger(__name__)


class _OnnxNet(nn.Module):
    """An ONNX model as the `nn.Module` evaluate_model runs. ORT's default session options
    (ORT_ENABLE_ALL) apply the same graph rewrites as the service's session (QDQ -> QLinearConv
    fusion included), so the int8 mIoU scored here is the served model's. (The service's own
    OnnxRuntimeModel is in roadseg.serve, which release must not import.)"""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        return torch.from_numpy(self.session.run(None, {INPUT_NAME: x.numpy()})[0])


def calibration_inputs(data_dir: Path, params: Params, spec: ModelSpec) -> list[np.ndarray]:
    """The training images, as the service prepares them (resized to spec.image_size, RGB,
    normalised by the model's mean/std), one (1, 3, H, W) array each, at most
    `package.int8_calibration_images` (the first ones by name)."""
    samples = list_split(data_dir, params, "train")[: params.package.int8_calibration_images]
    return [prepare(read_image(s.image), spec).numpy()[None] for s in samples]


def val_miou(path: Path, spec: ModelSpec, data_dir: Path, params: Params) -> dict[str, Any]:
    """Scores of the ONNX model at `path` on the validation split (roadseg evaluate's)."""
    return evaluate_model(_OnnxNet(path), spec, data_dir, params, "val", device="cpu",
                          progress=False)  # fmt: skip


def _label(miou: float | None) -> str:
    return "undefined" if miou is None else f"{miou:.4f}"


def int8_variant(
    onnx_file: Path | None, spec: ModelSpec, data_dir: Path, params: Params, out_dir: Path
) -> tuple[Path | None, dict[str, str]]:
    """`model.int8.onnx` in `out_dir` when it passes the gate, else None; and its labels. A
    failure (no model.onnx, no training or validation images, an ORT error) is labelled
    `failed` and logged in one line: it never costs the Bento its float model."""
    name = spec.model_name

    def not_shipped(status: str, reason: str, labels: dict[str, str]) -> tuple[None, dict]:
        level = logging.ERROR if status == "failed" else logging.WARNING  # rejected: by design
        log.log(level, "int8 variant of %s not shipped (%s): %s", name, status, reason)
        return None, labels | {"int8": status, "int8_reason": reason[:300]}

    if onnx_file is None:
        return not_shipped("failed", "no model.onnx to quantise", {})
    out = out_dir / ONNX_INT8_FILE
    try:
        labels = quantize_int8(onnx_file, out, calibration_inputs(data_dir, params, spec))
        float_scores = val_miou(onnx_file, spec, data_dir, params)
        int8_scores = val_miou(out, spec, data_dir, params)
    except Exception as e:  # ORT's tools raise many types; none may stop the packaging
        return not_shipped("failed", f"{type(e).__name__}: {e}".splitlines()[0], {})
    labels |= {
        "float_miou": _label(float_scores["miou"]),
        "int8_miou": _label(int8_scores["miou"]),
        "int8_val_images": str(float_scores["num_images"]),
    }
    decision = int8_gate(float_scores["miou"], int8_scores["miou"],
                         params.package.int8_max_miou_drop)  # fmt: skip
    if not decision.ship:
        return not_shipped("rejected", decision.reason, labels)
    log.info("int8 variant of %s shipped: %s", name, decision.reason)
    return out, labels | {"int8": "shipped", "int8_reason": decision.reason}
