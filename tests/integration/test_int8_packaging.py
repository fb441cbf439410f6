"""`roadseg package --int8 DATA_DIR`: the int8 variant travels into the packaged model when it
passes its gate, with its labels either way; rejected, the float model still ships and the
int8 backend's start-up error gives the recorded reason.

Slow-ish (a Bento build, two ONNX exports and quantisations); in subprocesses so BENTOML_HOME
points at a fresh store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.test_packaging import serving_bento

pytestmark = pytest.mark.slow

REJECTED = """
import json, logging, sys
import roadseg.release.int8 as int8
from roadseg.models.bento import load_packaged_model
from roadseg.release.packaging import import_version, resolve_version
from roadseg.serve.backends import Int8NotShipped, onnx_file_for
from roadseg.testing import register_random_model

tracking, data = sys.argv[1], sys.argv[2]
version = register_random_model(tracking, seed=1)
logging.getLogger("roadseg").setLevel(logging.INFO)  # a library sets the root's level to ERROR
scores = iter([{"miou": 0.40, "num_images": 4}, {"miou": 0.35, "num_images": 4}])
int8.val_miou = lambda *a: next(scores)  # a drop of 0.05: rejected
tag = import_version(resolve_version(f"models:/roadseg-unet/{version}", tracking_uri=tracking),
                     tracking_uri=tracking, int8_data=data)
_, _, info = load_packaged_model(tag)
try:
    onnx_file_for("onnxruntime_int8", info)
    error = None
except Int8NotShipped as e:
    error = str(e)
print(json.dumps({"version": version, "info": info, "error": error}))
"""


def _run(cmd: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "PYTHONWARNINGS": "ignore",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}"}  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_package_int8_ships_it_with_its_labels(synth_dir: Path, tmp_path: Path) -> None:
    from roadseg.testing import register_random_model

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    version = register_random_model(tracking)
    proc = _run([sys.executable, "-m", "roadseg.cli", "package", "--int8", str(synth_dir),
                 "--set", "package.int8_max_miou_drop=1.0"], tmp_path)  # fmt: skip
    assert "int8 variant shipped: mIoU drop " in proc.stderr
    tag = proc.stdout.strip().splitlines()[-1]
    script = ("import json, sys; from roadseg.models.bento import load_packaged_model, "
              "packaged_model_tag; import bentoml; b = bentoml.bentos.get(sys.argv[1]); "
              "print(json.dumps(load_packaged_model(packaged_model_tag(b.path))[2]))")  # fmt: skip
    info = json.loads(_run([sys.executable, "-c", script, tag], tmp_path).stdout.splitlines()[-1])
    labels = info["lineage"]
    assert info["mlflow_version"] == version and labels["int8"] == "shipped"
    assert Path(info["onnx_int8_path"]).name == "model.int8.onnx"
    assert Path(info["onnx_int8_path"]).is_file() and Path(info["onnx_path"]).is_file()
    assert 0.0 <= float(labels["float_miou"]) <= 1.0 and 0.0 <= float(labels["int8_miou"]) <= 1.0
    assert labels["int8_calibration"] == "minmax, 12 training images"
    assert labels["int8_reason"].startswith("mIoU drop ")

    # Served from the Bento: /metadata names the int8 backend, and it answers.
    log = tmp_path / "serve-int8.log"
    with serving_bento(tag, tmp_path / "bentoml", tmp_path, log, "onnxruntime_int8") as url:
        meta = httpx.get(f"{url}/metadata", timeout=30).json()
        image = sorted((synth_dir / "images/10k/val").glob("*.jpg"))[0].read_bytes()
        r = httpx.post(f"{url}/segment?format=mask", content=image,
                       headers={"Content-Type": "image/jpeg"}, timeout=120)  # fmt: skip
    assert meta["backend"] == "onnxruntime_int8" and meta["lineage"]["int8"] == "shipped"
    assert r.status_code == 200 and "exporting it now" not in log.read_text()
    # int8 answers other masks than the float model: the response itself says which answered
    assert r.headers["x-model-backend"] == "onnxruntime_int8"
    assert r.headers["x-model-version"] == meta["model_version"]


def test_a_bento_without_int8_does_not_start_on_the_int8_backend(tmp_path: Path) -> None:
    from roadseg.testing import register_random_model

    register_random_model(f"sqlite:///{tmp_path / 'mlruns.db'}")
    tag = _run([sys.executable, "-m", "roadseg.cli", "package"], tmp_path).stdout.split()[-1]
    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeError, match="exited with 1"):  # noqa: SIM117
        with serving_bento(tag, tmp_path / "bentoml", tmp_path, log, "onnxruntime_int8"):
            pass
    assert (
        "serve.backend onnxruntime_int8: model roadseg-unet v1 has no model.int8.onnx, its int8 "
        "variant was not shipped (packaged without `roadseg package --int8 DATA_DIR`)"
    ) in log.read_text()


def test_rejected_int8_ships_the_float_model_and_says_why(synth_dir: Path, tmp_path: Path):
    proc = _run([sys.executable, "-c", REJECTED, f"sqlite:///{tmp_path / 'mlruns.db'}",
                 str(synth_dir)], tmp_path)  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    info, labels = out["info"], out["info"]["lineage"]
    assert info["onnx_int8_path"] is None and Path(info["onnx_path"]).is_file()
    assert labels["int8"] == "rejected" and labels["float_miou"] == "0.4000"
    assert "int8 variant of unet not shipped (rejected): mIoU drop 0.0500 >= 0.01" in proc.stderr
    assert out["error"] == (
        f"serve.backend onnxruntime_int8: model roadseg-unet v{out['version']} has no "
        "model.int8.onnx, its int8 variant was not shipped (rejected: mIoU drop 0.0500 >= 0.01 "
        "(float 0.4000, int8 0.3500))"
    )
