"""Saving and loading models together with their `ModelSpec` (so a loaded model knows its
preprocessing and classes).

Two forms:
- a checkpoint `.pt` (what training writes every epoch): a dict with `model` (state dict) and
  `spec`, plus optimiser/scheduler/RNG state that loading for inference ignores;
- an MLflow logged model (`mlflow.pytorch.log_model`, name "model"), with the spec as
  `extra_files/model_spec.json` inside the model artifact and in the MLmodel `metadata`.

`load_model(uri)` accepts `models:/name@alias`, `models:/name/version`, `models:/<model_id>`
(MLflow 3 logged-model ids, `m-...`), `runs:/<run_id>/model` and a checkpoint path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from roadseg.models.spec import ModelSpec

SPEC_FILE = "model_spec.json"


def pip_requirements() -> list[str]:
    """The logged model's environment: the installed versions (`.venv` and the images hold the
    lock); torch without its local label (+cpu), so a CUDA machine can rebuild it. Explicit:
    MLflow's inference of them re-imports the model in a subprocess (slow)."""
    from importlib import metadata

    pins = [f"{name}=={metadata.version(name)}" for name in ("numpy", "pillow")]
    return [f"torch=={torch.__version__.split('+')[0]}", *pins, "roadseg"]


class ModelLoadError(ValueError):
    """A model URI or checkpoint that cannot be loaded, with the reason."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and `torch.compile` (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def build_from_spec(spec: ModelSpec, *, pretrained: bool = False) -> nn.Module:
    """The network of `spec`; `pretrained` starts its encoder from ImageNet weights (training
    from scratch; a saved model's weights are loaded over it anyway)."""
    from roadseg.models import build_model

    return build_model(
        spec.model_name,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        base_channels=spec.base_channels,
        pretrained=pretrained,
    )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a kill mid-write never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: checkpoints hold RNG states and plain dicts we wrote ourselves.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise ModelLoadError(f"{path}: not a roadseg checkpoint (needs 'model' and 'spec')")
    return state


def _load_checkpoint_model(path: Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    state = load_checkpoint(path)
    spec = ModelSpec.from_dict(state["spec"])
    model = build_from_spec(spec)
    model.load_state_dict(state["model"])
    info = {
        "uri": str(path),
        "source": "checkpoint",
        "epoch": state.get("epoch"),
        "best_metric": state.get("best_metric"),
        "run_id": state.get("run_id"),
        "version": f"ckpt-epoch{state.get('epoch')}",
    }
    return model.eval(), spec, info


def log_model(
    model: nn.Module,
    spec: ModelSpec,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
) -> Any:
    """Log the model (float32, CPU) with signature, input example and spec to the active run.

    Returns MLflow's ModelInfo (`model_id`, `model_uri`, `registered_model_version`).
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = unwrap(model)
    cpu = build_from_spec(spec)
    cpu.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    cpu.eval()
    example = np.zeros((1, spec.in_channels, *spec.image_size), dtype=np.float32)
    # Any batch size and image size: the network is fully convolutional.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.in_channels, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.num_classes, -1, -1))]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / SPEC_FILE
        spec_path.write_text(json.dumps(spec.to_dict(), indent=2))
        return mlflow.pytorch.log_model(
            cpu,
            name=name,
            signature=signature,
            input_example=example,
            extra_files=[str(spec_path)],
            pip_requirements=pip_requirements(),
            metadata={"roadseg_spec": spec.to_dict()},
            registered_model_name=registered_model_name,
            # pickle, not the pt2 default: torch.export specialises the batch and image size.
            serialization_format="pickle",
        )


def registered_version(client: Any, uri: str) -> Any:
    """The MLflow ModelVersion behind `models:/name@alias` or `models:/name/<version>`.

    Raises ModelLoadError for any other form (logged-model ids, runs:/ URIs, a bad version).
    """
    rest = uri.removeprefix("models:/") if uri.startswith("models:/") else ""
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.partition("/")
    if not name or not version.isdigit():
        raise ModelLoadError(f"{uri}: expected models:/name@alias or models:/name/<version>")
    return client.get_model_version(name, version)


def _resolve_registered(uri: str) -> dict[str, Any]:
    """Name, version, run id and model id behind a models:/ URI (None where not applicable)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    rest = uri[len("models:/") :]
    if rest.startswith("m-") and "/" not in rest:
        logged = client.get_logged_model(rest)
        return {
            "model_id": rest,
            "run_id": logged.source_run_id,
            "name": logged.name,
            "version": rest,
        }
    mv = registered_version(client, uri)
    return {
        "name": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "model_id": getattr(mv, "model_id", None),
    }


def load_model(uri: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """(model in eval mode on CPU, its spec, info dict: uri, source, version, run_id, model_id).

    Uses the current MLflow tracking URI (set it with `mlflow.set_tracking_uri` before calling).
    """
    text = str(uri)
    if not text.startswith(("models:/", "runs:/")):
        return _load_checkpoint_model(Path(text))
    import mlflow

    info: dict[str, Any] = {"uri": text, "source": "mlflow"}
    try:
        if text.startswith("models:/"):
            info |= _resolve_registered(text)
        else:
            info |= {"run_id": text.split("/")[1], "version": text}
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        model = mlflow.pytorch.load_model(str(local), map_location="cpu")
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot load model {text}: {e}") from e
    spec_file = local / "extra_files" / SPEC_FILE
    if not spec_file.is_file():
        raise ModelLoadError(f"{text}: model has no {SPEC_FILE}; it was not logged by roadseg")
    spec = ModelSpec.from_dict(json.loads(spec_file.read_text()))
    return model.eval(), spec, info
