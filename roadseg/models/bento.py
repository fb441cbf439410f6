"""The packaged model format: what `roadseg package` (roadseg.release.packaging) puts into the
BentoML model store and a Bento, and how it is read back with no MLflow: the weights,
`model.onnx` (roadseg.models.onnx), `model_spec.json`, the drift reference profile and the
lineage labels.

`load_packaged_model` returns what `roadseg.models.io.load_model` returns, `(model, spec, info)`,
with the lineage in `info`; the serving engine loads through either (roadseg.serve.engine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from roadseg.models.io import SPEC_FILE, build_from_spec
from roadseg.models.onnx import ONNX_FILE
from roadseg.models.quantize import ONNX_INT8_FILE
from roadseg.models.spec import ModelSpec

BENTO_MODEL_NAME = "roadseg-unet"
WEIGHTS_FILE = "weights.pt"
PROFILE_FILE = "drift/reference_profile.csv"
# The model card written at registration (roadseg.release.card): in the version's MLflow run
# and in the packaged model, under the same relative paths.
CARD_DIR = "model_card"
CARD_MD = f"{CARD_DIR}/model_card.md"
CARD_HTML = f"{CARD_DIR}/model_card.html"


class PackagingError(ValueError):
    """A model URI that cannot be packaged, or a Bento without a roadseg model, with the reason."""


def bento_of(path: str | Path) -> Path | None:
    """The Bento directory holding `path` (a file of its `src/`), or None outside a Bento."""
    for parent in Path(path).resolve().parents:
        if (parent / "bento.yaml").is_file() and (parent / "src").is_dir():
            return parent
    return None


def packaged_model_tag(bento_dir: str | Path) -> str:
    """The `roadseg-unet` model tag a built Bento references (from its `bento.yaml`)."""
    info = yaml.safe_load((Path(bento_dir) / "bento.yaml").read_text())
    tags = [
        m["tag"] if isinstance(m, dict) else str(m)
        for m in info.get("models") or []
        if str(m["tag"] if isinstance(m, dict) else m).split(":")[0] == BENTO_MODEL_NAME
    ]
    if len(tags) != 1:
        raise PackagingError(f"{bento_dir}: expected one {BENTO_MODEL_NAME} model, found {tags}")
    return tags[0]


def bento_tag_of(bento_dir: str | Path) -> str:
    info = yaml.safe_load((Path(bento_dir) / "bento.yaml").read_text())
    return f"{info['name']}:{info['version']}"


def load_packaged_model(
    model_tag: str | None = None, *, bento_dir: str | Path | None = None
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """(model in eval mode on CPU, spec, info) from the BentoML model store, no MLflow needed.

    Give the model tag, or the Bento directory (its referenced model is used). Inside a served
    Bento, BentoML's model store is the Bento's own; else the global one under BENTOML_HOME.
    `info` carries `source="bento"`, the MLflow `name`/`version`/`run_id`/`model_id`, the
    `bento_model` tag, `bento_tag` (when loaded from a Bento) and every lineage label.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    if model_tag is None:
        if bento_dir is None:
            raise PackagingError("load_packaged_model needs a model tag or a Bento directory")
        model_tag = packaged_model_tag(bento_dir)
    try:
        stored = bentoml.models.get(model_tag)
    except NotFound as e:
        raise PackagingError(f"BentoML model {model_tag} not found ({e})") from e
    spec = ModelSpec.from_dict(json.loads(Path(stored.path_of(SPEC_FILE)).read_text()))
    model = build_from_spec(spec)
    model.load_state_dict(torch.load(stored.path_of(WEIGHTS_FILE), map_location="cpu",
                                     weights_only=True))  # fmt: skip
    labels = dict(stored.info.labels)
    info: dict[str, Any] = {
        "uri": f"bentoml:{stored.tag}",
        "source": "bento",
        "name": labels.get("mlflow_model") or BENTO_MODEL_NAME,
        "version": labels.get("mlflow_version") or str(stored.tag.version),
        "mlflow_version": labels.get("mlflow_version"),
        "run_id": labels.get("mlflow_run_id") or None,
        "model_id": labels.get("mlflow_model_id") or None,
        "bento_model": str(stored.tag),
        "bento_tag": bento_tag_of(bento_dir) if bento_dir is not None else None,
        "lineage": labels,
    }
    if info["bento_tag"]:
        # X-Model-Version and the monitoring log then name both the registry version and the Bento.
        info["version"] = f"{info['version']}+{info['bento_tag']}"
    # The ONNX form `roadseg package` exported beside the weights (older Bentos have none).
    onnx_file = Path(stored.path_of(ONNX_FILE))
    info["onnx_path"] = str(onnx_file) if onnx_file.is_file() else None
    # The int8 variant, when `roadseg package --int8` shipped it (its labels say why if not).
    int8_file = Path(stored.path_of(ONNX_INT8_FILE))
    info["onnx_int8_path"] = str(int8_file) if int8_file.is_file() else None
    profile = Path(stored.path_of(PROFILE_FILE))
    info["reference_profile"] = str(profile) if profile.is_file() else None
    card = Path(stored.path_of(CARD_MD))
    info["model_card"] = str(card.parent) if card.is_file() else None
    return model.eval(), spec, info
