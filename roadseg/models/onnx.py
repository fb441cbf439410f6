"""The ONNX form of a network: what `roadseg package` writes beside the weights (`model.onnx`)
and the service's onnxruntime backend runs (roadseg.serve.backends).

    labels = export_onnx(model, spec, bento_model.path_of(ONNX_FILE))

The graph takes `images` (N, 3, H, W) float32, normalised as `roadseg.inference.predict.prepare`
makes them, and returns `logits` (N, C, H, W); batch, height and width are dynamic, so one file
serves every batch size (the service always feeds `spec.image_size`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from roadseg.models.spec import ModelSpec

ONNX_FILE = "model.onnx"
# Opset 17: every ONNX Runtime since 1.14 and OpenVINO 2023+ run it, and it holds every op our
# networks use (Conv, BatchNormalization, Resize, ConvTranspose, HardSigmoid/Clip, Concat).
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
_DYNAMIC = {0: "batch", 2: "height", 3: "width"}
# Export sanity check: the exported graph against eager torch on one random input, relative to
# the largest logit. Float reassociation moves logits by ~1e-7 of it; a wrong graph by O(1).
_CHECK_RTOL = 1e-4


class OnnxExportError(RuntimeError):
    """A network that cannot be exported (or whose export disagrees with torch): names the
    model and, when the exporter says, the operator."""


def failing_op(message: str) -> str | None:
    """The operator an exporter error names (`aten::grid_sampler`, `prim::PythonOp`...), if any."""
    m = re.search(r"'((?:aten|prim|onnx|quantized)::\w+)'", message) or re.search(
        r"\b((?:aten|prim)::\w+)", message
    )
    return m.group(1) if m else None


def export_onnx(model: nn.Module, spec: ModelSpec, path: str | Path) -> dict[str, str]:
    """Write `model` as ONNX to `path`, check it in ONNX Runtime against torch on one input of
    `spec.image_size`, and return the labels that say how it was made. (The ONNX checker runs at
    packaging, `roadseg.release.packaging`: the service's image has onnxruntime, not onnx.)

    Raises:
        OnnxExportError: naming the model and the failing operator.
    """
    import onnxruntime as ort

    model = model.eval().cpu()
    h, w = spec.image_size
    x = torch.randn(1, spec.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    name = spec.model_name
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript and gives a graph no faster for these convolutional networks.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: _DYNAMIC, OUTPUT_NAME: _DYNAMIC},
            )
    except Exception as e:
        op = failing_op(str(e))
        where = f" at operator {op}" if op else ""
        raise OnnxExportError(f"ONNX export of model {name!r} failed{where}: {e}") from e
    with torch.no_grad():
        want = model(x).numpy()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    except Exception as e:  # e.g. an op this runtime lacks: its message names the node
        raise OnnxExportError(f"ONNX Runtime cannot run the export of model {name!r}: {e}") from e
    scale = max(1.0, float(abs(want).max()))
    err = float(abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not err <= _CHECK_RTOL * scale:
        raise OnnxExportError(
            f"ONNX export of model {name!r} disagrees with torch: shape {got.shape} vs "
            f"{want.shape}, max |logit difference| {err:.3g} (> {_CHECK_RTOL:g} x {scale:.3g})"
        )
    return {
        "onnx_file": ONNX_FILE,
        "onnx_opset": str(OPSET),
        "onnx_exporter": f"torch.onnx {torch.__version__} (TorchScript)",
        "onnxruntime_version": ort.__version__,
    }
