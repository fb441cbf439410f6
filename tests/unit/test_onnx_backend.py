"""The onnxruntime backend answers what the torch backend answers.

On real BDD100k images at full resolution (1280x720), for every model name: the masks agree on at
least 99.99% of pixels, every differing pixel is an argmax tie (its two classes' upsampled logits
within 1e-4), the confidences within 1e-3. The models are small and random, with BatchNorm
statistics taken from the images so that their masks hold many classes (a fresh network answers
one class everywhere, and agreement would be trivial). Also: the export's labels and errors,
and how many threads a session gets under a CPU limit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from roadseg.config import MODEL_NAMES
from roadseg.data.bdd100k import read_image
from roadseg.inference.predict import predict, prepare
from roadseg.models import build_model
from roadseg.models.onnx import OnnxExportError, export_onnx, failing_op
from roadseg.release.packaging import export_for_onnxruntime
from roadseg.serve.backends import (
    OnnxRuntimeModel,
    intra_op_threads,
    load_backend,
    quota_cpus,
)
from roadseg.testing import random_unet

TIE = 1e-4


@pytest.fixture(scope="module")
def real_images(real_sample: Path) -> list[np.ndarray]:
    paths = sorted((real_sample / "images/10k").rglob("*.jpg"))[:2]
    images = [read_image(p) for p in paths]
    assert all(im.shape == (720, 1280, 3) for im in images)
    return images


def lively_model(name: str, images: list[np.ndarray]) -> tuple[nn.Module, object]:
    """A random `name` network whose BatchNorm statistics are those of `images`' activations."""
    _, spec = random_unet(base_channels=8)
    spec = dataclasses.replace(spec, model_name=name, image_size=(96, 160))
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=spec.num_classes, base_channels=8)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain mean over the one calibration batch
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.stack([prepare(im, spec) for im in images]))
    return model.eval(), spec


def upsampled(model: nn.Module, image: np.ndarray, spec) -> torch.Tensor:
    """(C, H, W) logits at the image's resolution, as `postprocess`'s mask is their argmax."""
    with torch.no_grad():
        lg = model(prepare(image, spec)[None])
    return F.interpolate(lg, size=image.shape[:2], mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnxruntime_masks_equal_torch_on_real_images(name, real_images) -> None:
    model, spec = lively_model(name, real_images)
    onnx_model = load_backend("onnxruntime", model, spec, threads=2)
    assert isinstance(onnx_model, OnnxRuntimeModel)
    want = predict(model, real_images, spec, device="cpu")
    got = predict(onnx_model, real_images, spec, device="cpu")
    for image, a, b in zip(real_images, want, got, strict=True):
        assert len(np.unique(a.mask)) >= 4, "the test model must predict several classes"
        assert (a.mask == b.mask).mean() >= 0.9999
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
        ys, xs = (torch.from_numpy(i) for i in np.nonzero(a.mask != b.mask))
        ca, cb = (torch.from_numpy(m.mask).long()[ys, xs] for m in (a, b))
        for lg in (upsampled(model, image, spec), upsampled(onnx_model, image, spec)):
            gaps = (lg[ca, ys, xs] - lg[cb, ys, xs]).abs()
            assert len(ys) == 0 or gaps.max().item() <= TIE, (name, len(ys), gaps.max())


class _Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[0]


def test_export_labels_and_a_clear_error(tmp_path) -> None:
    model, spec = random_unet(base_channels=4)
    path, labels = export_for_onnxruntime(model, spec, tmp_path)
    assert path.is_file() and labels["onnx_file"] == path.name == "model.onnx"
    assert labels["onnx_opset"] == "17" and labels["onnx_checker"].startswith("onnx ")
    assert labels["onnxruntime_version"] and "torch" in labels["onnx_exporter"]

    with pytest.raises(OnnxExportError, match=r"model 'unet'.*aten::linalg_svd"):
        export_onnx(_Unexportable(), spec, tmp_path / "bad.onnx")
    # packaging goes on with the torch weights and labels why there is no model.onnx
    path, labels = export_for_onnxruntime(_Unexportable(), spec, tmp_path)
    assert path is None and "aten::linalg_svd" in labels["onnx_export_error"]


def test_failing_op_is_read_from_the_exporter_message() -> None:
    msg = "Exporting the operator 'aten::grid_sampler' to ONNX opset version 17 is not supported."
    assert failing_op(msg) == "aten::grid_sampler"
    assert failing_op("something else went wrong") is None


@pytest.mark.parametrize(
    ("cpu_max", "cfs", "quota"),
    [
        ("200000 100000", None, 2.0),
        ("150000 100000", None, 1.5),
        ("max 100000", None, None),
        (None, ("50000", "100000"), 0.5),
        (None, ("-1", "100000"), None),
        (None, None, None),
    ],
)
def test_quota_cpus_reads_cgroup_v1_and_v2(cpu_max, cfs, quota) -> None:
    assert quota_cpus(cpu_max, cfs) == quota


def test_threads_follow_the_cpu_limit() -> None:
    assert intra_op_threads(64, 2.0) == 2  # a 2-CPU pod on a 64-core node
    assert intra_op_threads(64, 1.5) == 2
    assert intra_op_threads(64, 0.5) == 1
    assert intra_op_threads(4, None) == 4
    assert intra_op_threads(2, 8.0) == 2


def test_unknown_backend_is_refused() -> None:
    model, spec = random_unet(base_channels=4)
    assert load_backend("torch", model, spec) is model
    with pytest.raises(ValueError, match="'tensorrt'"):
        load_backend("tensorrt", model, spec)
