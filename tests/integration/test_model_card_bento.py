"""The model card travels into the packaged model (`roadseg package` → BentoML model store) and
is what the service finds there (`load_packaged_model` → `info["model_card"]`, GET /model-card).

Slow-ish (one ONNX export); run in a subprocess so BENTOML_HOME points at a fresh store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
from mlflow import MlflowClient
from roadseg.models.bento import load_packaged_model
from roadseg.release.card import build_card, log_card
from roadseg.release.packaging import import_version, resolve_version
from roadseg.testing import register_random_model

tracking = sys.argv[1]
version = register_random_model(tracking)
client = MlflowClient(tracking, tracking)
mv = client.get_model_version("roadseg-unet", version)
scores = {"miou": 0.4242, "per_class": [{"name": "road", "iou": 0.4242, "present": True}]}
card = build_card(client, model_name="roadseg-unet", version=version, run_id=mv.run_id,
                  metrics=scores, tags={}, iou_floor=0.5, promotion="test", dataset="bdd100k")
log_card(client, card, mv.run_id)
tag = import_version(resolve_version(f"models:/roadseg-unet/{version}", tracking_uri=tracking),
                     tracking_uri=tracking)
_, _, info = load_packaged_model(tag)
print(json.dumps({"version": version, "card": info["model_card"]}))
"""


def test_the_packaged_model_carries_its_card(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path / 'mlruns.db'}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    folder = Path(out["card"])
    assert folder.is_relative_to(tmp_path / "bentoml")  # in the BentoML store, not MLflow's
    md = (folder / "model_card.md").read_text()
    assert md.startswith(f"# Model card: roadseg-unet v{out['version']}")
    assert "| road | 0.4242 |" in md and "road: IoU 0.4242 < floor 0.5000" in md
    assert "<td>0.4242</td>" in (folder / "model_card.html").read_text()
