"""Registry → Bento: `roadseg package` makes a self-contained Bento that serves exactly the
registered version, with MLflow unreachable, also after export → import into a fresh store, and
with its packaged model.onnx in ONNX Runtime (serve.backend: onnxruntime).

Slow (three `bentoml serve` start-ups, ~3-5 min on the shared 2-core machine).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from roadseg.testing import free_port, register_random_model, running_service

pytestmark = pytest.mark.slow
ROADSEG = [sys.executable, "-m", "roadseg.cli"]


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(cmd, env={**os.environ, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def serving_bento(tag: str, bentoml_home: Path, cwd: Path, log: Path, backend: str = "torch"):
    """`bentoml serve <tag>` from a folder that is not the repository, MLflow on a closed port."""
    env = {"BENTOML_HOME": str(bentoml_home), "ROADSEG_MODEL_URI": None,
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens there
           "ROADSEG_MONITOR_DIR": str(cwd / "monitoring"), "ROADSEG_BACKEND": backend}  # fmt: skip
    return running_service(env, target=tag, cwd=cwd, log_path=log, timeout=300)


def _served_masks(url: str, images: list[Path]) -> tuple[dict[str, np.ndarray], dict, str]:
    import httpx

    masks = {}
    for path in images:
        r = httpx.post(f"{url}/segment?format=mask", content=path.read_bytes(),
                       headers={"Content-Type": "image/jpeg"}, timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
        masks[path.stem] = np.asarray(Image.open(io.BytesIO(r.content)))
    r = httpx.get(f"{url}/metadata", timeout=30)
    return masks, r.json(), r.headers["x-model-version"]


def test_packaged_bento_serves_the_registered_version_without_mlflow(synth_dir, tmp_path) -> None:
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    version = register_random_model(tracking, base_channels=4)
    env = {"MLFLOW_TRACKING_URI": tracking, "BENTOML_HOME": str(tmp_path / "bentoml")}
    out = _run([*ROADSEG, "package", "--model-uri", "models:/roadseg-unet@champion",
                "--export", str(tmp_path / "dist")], env, tmp_path)  # fmt: skip
    tag = out.strip().splitlines()[-1]
    assert tag.startswith("roadseg:")
    _assert_bento_installs_the_lock(tmp_path / "bentoml/bentos" / tag.replace(":", "/"))
    mv = MlflowClient(tracking).get_model_version("roadseg-unet", version)
    assert mv.tags["bento_tag"] == tag
    (archive,) = (tmp_path / "dist").glob("*.bento")

    # Reference: `roadseg evaluate --save-preds` of the same version on the same images.
    preds = tmp_path / "preds"
    _run([*ROADSEG, "evaluate", "--model-uri", f"models:/roadseg-unet/{version}", "--data-dir",
          str(synth_dir), "--split", "val", "--save-preds", str(preds)], env, tmp_path)  # fmt: skip
    images = sorted((synth_dir / "images/10k/val").glob("*.jpg"))
    assert len(images) == 4
    expected = {p.stem: np.asarray(Image.open(preds / f"{p.stem}.png")) for p in images}
    assert len({m.tobytes() for m in expected.values()}) == 4  # four different masks

    with serving_bento(tag, tmp_path / "bentoml", tmp_path, tmp_path / "serve1.log") as url:
        served, meta, header = _served_masks(url, images)
    for stem, mask in expected.items():
        np.testing.assert_array_equal(served[stem], mask, err_msg=stem)
    assert meta["bento_tag"] == tag and meta["mlflow_version"] == version
    assert meta["run_id"] == mv.run_id and meta["lineage"]["mlflow_model"] == "roadseg-unet"
    assert header == f"{version}+{tag}"

    fresh = tmp_path / "bentoml-fresh"
    _run([sys.executable, "-m", "bentoml", "import", str(archive)],
         {"BENTOML_HOME": str(fresh)}, tmp_path)  # fmt: skip
    with serving_bento(tag, fresh, tmp_path, tmp_path / "serve2.log") as url:
        served_again, meta_again, _ = _served_masks(url, images)
    for stem, mask in expected.items():
        np.testing.assert_array_equal(served_again[stem], mask, err_msg=f"imported: {stem}")
    assert meta_again["bento_tag"] == tag

    # The packaged model.onnx, in ONNX Runtime: the same masks (argmax ties aside: none here).
    assert meta_again["lineage"]["onnx_opset"] == "17" and meta_again["backend"] == "torch"
    with serving_bento(tag, fresh, tmp_path, tmp_path / "serve3.log", "onnxruntime") as url:
        served_onnx, meta_onnx, _ = _served_masks(url, images)
    assert "exporting it now" not in (tmp_path / "serve3.log").read_text()
    assert meta_onnx["backend"] == "onnxruntime"
    for stem, mask in expected.items():
        np.testing.assert_array_equal(served_onnx[stem], mask, err_msg=f"onnxruntime: {stem}")


def _assert_bento_installs_the_lock(bento: Path) -> None:
    """The Bento's requirements are requirements/serve.txt: lock.txt's versions, torch's CPU
    build with the index it comes from."""
    from scripts.lockfile import read_lock

    repo = Path(__file__).resolve().parents[2]
    built = read_lock(bento / "env/python/requirements.txt")
    lock = read_lock(repo / "requirements/lock.txt")
    serve = read_lock(repo / "requirements/serve.txt")
    assert set(serve) <= set(built)
    for name, version in built.items():
        assert lock.get(name) == version, (
            f"the Bento installs {name}=={version}, lock {lock.get(name)}"
        )
    assert built["torch"].endswith("+cpu") and built["bentoml"] == lock["bentoml"]
    text = (bento / "env/python/requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in text + (bento / "bento.yaml").read_text()


def test_package_refuses_a_uri_without_a_registry_entry(tmp_path) -> None:
    from roadseg.release.packaging import PackagingError, resolve_version

    with pytest.raises(PackagingError, match="package a registered version"):
        resolve_version("runs:/abc/model", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(PackagingError, match="not in the registry"):
        resolve_version("models:/nope@champion", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
