"""The optional int8 form of a network: `model.onnx` statically quantised by ONNX Runtime's tools
(`model.int8.onnx`), and the gate that decides whether it ships (docs: API, Serving backends).

    inputs = [prepare(read_image(p), spec).numpy()[None] for p in training_images]
    labels = quantize_int8(float_onnx, out_dir / ONNX_INT8_FILE, inputs)
    decision = int8_gate(float_miou, int8_miou)        # ships only when the drop is < 0.01

The calibration inputs are made by the caller with `roadseg.inference.predict.prepare` (the
service's own preprocessing at `spec.image_size`; that stage sits above this one), one image per
batch. onnxruntime.quantization imports `onnx`, which the service's image lacks: it is imported
only inside `quantize_int8`, never by the service.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from roadseg.models.onnx import INPUT_NAME

ONNX_INT8_FILE = "model.int8.onnx"
# The bar: int8 ships only if it costs less than this much validation mIoU.
MAX_MIOU_DROP = 0.01
# MinMax: the range of every activation over the calibration images. Entropy and Percentile
# keep a histogram of every activation tensor (memory and minutes at 288x512) and, with a dozen
# images, estimate their clipping point from little data; MinMax never clips a value it has seen.
CALIBRATION = "minmax"


class _Inputs:
    """A CalibrationDataReader (ORT checks only for `get_next`) over prepared (1, 3, H, W) inputs."""

    def __init__(self, inputs: Sequence[np.ndarray]) -> None:
        self._inputs = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._inputs):
            return None
        self._next += 1
        return {INPUT_NAME: self._inputs[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def quantize_int8(float_onnx: str | Path, out: str | Path, inputs: Sequence[np.ndarray]) -> dict:
    """Write the static int8 quantisation of `float_onnx` to `out`, calibrated on `inputs`
    (prepared (1, 3, H, W) float32 arrays); return the labels that say how it was made.

    Raises:
        ValueError: no calibration inputs. Anything ONNX Runtime's tools raise passes through.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if not inputs:
        raise ValueError("int8 calibration needs at least one image")
    with tempfile.TemporaryDirectory() as tmp:
        # ORT's recommended pre-processing: BatchNorm folded into Conv and shapes inferred, so
        # the quantiser sees Conv(+bias) -> Relu chains and quantises every tensor it can.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            _Inputs(inputs),  # type: ignore[arg-type]  # duck-typed: ORT checks get_next only
            # QDQ: ORT's CPU kernels fuse DQ -> Conv -> Q into QLinearConv (its docs: preferred).
            quant_format=QuantFormat.QDQ,
            # uint8 activations (ReLU outputs are non-negative: the full 8 bits) with int8
            # weights, per output channel (a depthwise filter's range differs by channel).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # This CPU (and most CPU nodes without VNNI) multiplies u8 x s8 with AVX2's
            # vpmaddubsw, whose pairwise int16 sums saturate at 32767 for full 8-bit weights;
            # 7-bit weights keep every pair in range (ORT's docs: reduce_range on non-VNNI x86).
            # On VNNI CPUs it costs a bit of weight precision, no saturation either way.
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "int8_file": ONNX_INT8_FILE,
        "int8_calibration": f"{CALIBRATION}, {len(inputs)} training images",
        "int8_scheme": "QDQ, uint8 activations, int8 per-channel 7-bit weights",
    }


@dataclass(frozen=True)
class GateDecision:
    ship: bool
    reason: str


def int8_gate(
    float_miou: float | None, int8_miou: float | None, max_drop: float = MAX_MIOU_DROP
) -> GateDecision:
    """Ship int8 only when mIoU(float) - mIoU(int8) < `max_drop` on the validation images; an
    undefined score (None or NaN: nothing to compare) never ships."""
    if float_miou is None or int8_miou is None or math.isnan(float_miou) or math.isnan(int8_miou):
        return GateDecision(False, f"mIoU undefined (float {float_miou}, int8 {int8_miou})")
    # Rounded: 0.30 - 0.25 is 0.04999999999999999 in floats; a decision must match its reason.
    drop = round(float_miou - int8_miou, 9)
    verdict = "<" if drop < max_drop else ">="
    reason = (
        f"mIoU drop {drop:.4f} {verdict} {max_drop:g} "
        f"(float {float_miou:.4f}, int8 {int8_miou:.4f})"
    )
    return GateDecision(drop < max_drop, reason)
