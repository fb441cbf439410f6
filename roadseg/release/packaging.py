"""Registry → Bento: package one registered MLflow version into a self-contained Bento.

`package_model` resolves a `models:/` URI to exactly one registered version, imports it into the
BentoML model store as `roadseg-unet` (weights, their ONNX export `model.onnx`,
`model_spec.json`, the drift reference profile, lineage labels; with `int8_data`, the int8
variant `model.int8.onnx` when it passes its gate, roadseg.release.int8), builds the Bento from
`bentofile.yaml` referencing exactly that model, tags the MLflow version `bento_tag`, and
optionally exports the `.bento` archive::

    roadseg package --model-uri models:/roadseg-unet@champion --export dist/
    bentoml serve roadseg:<tag>          # no MLflow server needed: the model is in the Bento

The format itself (file names, how a packaged model is read back) is `roadseg.models.bento`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from roadseg.config import Params, load_params
from roadseg.models.bento import (
    BENTO_MODEL_NAME,
    CARD_DIR,
    PROFILE_FILE,
    WEIGHTS_FILE,
    PackagingError,
)
from roadseg.models.io import SPEC_FILE
from roadseg.models.onnx import ONNX_FILE
from roadseg.models.quantize import ONNX_INT8_FILE

log = logging.getLogger(__name__)

BENTO_TAG = "bento_tag"  # MLflow model-version tags
ARCHIVE_TAG = "bento_archive"
# MLflow version tags copied into the BentoML model's labels (the registry step writes them).
LINEAGE_TAGS = (
    "loss",
    "dataset_version",
    "git_commit",
    "params_hash",
    "val_miou",
    "pipeline_run_id",
)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered MLflow model version and the lineage tags it carries."""

    name: str
    version: str
    run_id: str
    model_id: str | None
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def labels(self) -> dict[str, str]:
        """BentoML labels (strings only): the MLflow identity plus the lineage tags present."""
        labels = {
            "mlflow_model": self.name,
            "mlflow_version": self.version,
            "mlflow_run_id": self.run_id,
            "mlflow_model_id": self.model_id or "",
        }
        return labels | {k: str(self.tags[k]) for k in LINEAGE_TAGS if k in self.tags}


@dataclass(frozen=True)
class PackageResult:
    bento_tag: str
    model_tag: str
    mlflow_name: str
    mlflow_version: str
    run_id: str
    archive: str | None
    int8: str | None = None  # with int8_data: "shipped: <why>", "rejected: <why>" or "failed: ..."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_version(uri: str, *, tracking_uri: str) -> RegisteredVersion:
    """`models:/name@alias` or `models:/name/<version>` → the one registered version behind it.

    Other URIs (runs:/, logged-model ids, checkpoints) have no registry entry to tag: refused.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    rest = uri.removeprefix("models:/") if uri.startswith("models:/") else None
    if not rest or rest.startswith("m-"):
        raise PackagingError(
            f"{uri!r}: package a registered version, models:/name@alias or models:/name/<version>"
        )
    from roadseg.models.io import ModelLoadError, registered_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = registered_version(client, uri)
    except ModelLoadError as e:
        raise PackagingError(str(e)) from e
    except MlflowException as e:
        raise PackagingError(f"{uri}: not in the registry at {tracking_uri} ({e.message})") from e
    tags = dict(mv.tags)
    if "params_hash" not in tags:  # registered outside the pipeline: the run's own digest
        try:
            digest = client.get_run(mv.run_id).data.params.get("params_digest")
        except MlflowException:
            digest = None
        tags |= {"params_hash": digest} if digest else {}
    return RegisteredVersion(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        model_id=getattr(mv, "model_id", None),
        tags=tags,
    )


def find_imported(version: RegisteredVersion, *, int8: bool = False) -> Any | None:
    """The `roadseg-unet` model already imported from this MLflow version, if any (with `int8`:
    one whose int8 variant was tried)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(BENTO_MODEL_NAME)
    except NotFound:
        return None
    for m in sorted(models, key=lambda m: m.info.creation_time, reverse=True):
        labels = m.info.labels
        same = (labels.get("mlflow_model"), labels.get("mlflow_version"),
                labels.get("mlflow_run_id")) == (version.name, version.version, version.run_id)  # fmt: skip
        # one imported before models carried model.onnx is imported again
        onnx = "onnx_file" in labels or "onnx_export_error" in labels
        if same and onnx and (not int8 or "int8" in labels):  # --int8: one it was tried on
            return m
    return None


def import_version(
    version: RegisteredVersion,
    *,
    tracking_uri: str,
    int8_data: Path | None = None,
    params: Params | None = None,
) -> str:
    """Import the version into the BentoML model store (reused when already there); its tag.

    The model directory holds the float32 state dict, `model.onnx` (an export
    failure is logged and labelled `onnx_export_error`, and the torch weights are still
    packaged), `model_spec.json`, `lineage.json` and, when the registry stored them, the drift
    reference profile and the model card (`model_card/`); nothing in it needs MLflow. With
    `int8_data` (a dataset directory; `params` reads it), also `model.int8.onnx` when it passes
    its gate, and the `int8*`, `float_miou` labels either way (roadseg.release.int8).
    """
    import bentoml
    import mlflow
    from mlflow import MlflowClient

    from roadseg.models.io import load_model, unwrap
    from roadseg.release.card import CARD_TAG, download_card
    from roadseg.release.registry import PROFILE_TAG, download_reference_profile

    existing = find_imported(version, int8=int8_data is not None)
    if existing is not None:
        log.info("%s v%s is already %s", version.name, version.version, existing.tag)
        return str(existing.tag)
    mlflow.set_tracking_uri(tracking_uri)  # load_model resolves models:/ with it
    model, spec, _ = load_model(version.uri)
    labels = version.labels()
    with tempfile.TemporaryDirectory() as tmp:
        profile = None
        if PROFILE_TAG in version.tags:
            profile = download_reference_profile(
                version.name, version.version, tracking_uri=tracking_uri, dst=tmp
            )
        else:
            log.warning("%s v%s has no drift reference profile", version.name, version.version)
        card = None
        if CARD_TAG in version.tags:  # served at GET /model-card
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            card = download_card(client, version.run_id, Path(tmp) / "card")
        onnx_file, onnx_labels = export_for_onnxruntime(unwrap(model), spec, Path(tmp))
        labels = labels | onnx_labels
        int8_file = None
        if int8_data is not None:
            from roadseg.release.int8 import int8_variant  # torch.onnx, ORT's tools: only here

            int8_file, int8_labels = int8_variant(onnx_file, spec, Path(int8_data),
                                                  params or load_params(), Path(tmp))  # fmt: skip
            labels = labels | int8_labels
        with bentoml.models.create(
            BENTO_MODEL_NAME, labels=labels, metadata={"roadseg_spec": spec.to_dict()}
        ) as bento_model:
            if onnx_file is not None:
                shutil.copy(onnx_file, bento_model.path_of(ONNX_FILE))
            if int8_file is not None:
                shutil.copy(int8_file, bento_model.path_of(ONNX_INT8_FILE))
            state = {k: v.detach().float().cpu() for k, v in unwrap(model).state_dict().items()}
            torch.save(state, bento_model.path_of(WEIGHTS_FILE))
            Path(bento_model.path_of(SPEC_FILE)).write_text(json.dumps(spec.to_dict(), indent=2))
            Path(bento_model.path_of("lineage.json")).write_text(json.dumps(labels, indent=2))
            if profile is not None:
                target = Path(bento_model.path_of(PROFILE_FILE))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(profile, target)
            if card is not None:
                shutil.copytree(card, bento_model.path_of(CARD_DIR))
    return str(bento_model.tag)


def export_for_onnxruntime(
    model: torch.nn.Module, spec: Any, tmp: Path
) -> tuple[Path | None, dict[str, str]]:
    """`model.onnx` in `tmp`, checked by the ONNX checker and against torch in ONNX Runtime, and
    its labels (opset, exporter, checker and runtime versions); or (None, the error) when the
    network does not export: ONNX is an optional second form of the model, so its failure must
    not cost the Bento its torch weights."""
    import onnx

    from roadseg.models.onnx import OnnxExportError, export_onnx

    def without_onnx(error: str) -> tuple[None, dict[str, str]]:
        log.error("%s; packaging the torch weights only (serve.backend: torch)", error)
        return None, {"onnx_export_error": error[:500]}

    path = tmp / ONNX_FILE
    try:
        labels = export_onnx(model, spec, path)
    except OnnxExportError as e:
        return without_onnx(str(e))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        return without_onnx(f"ONNX export of model {spec.model_name!r} fails the checker: {e}")
    return path, labels | {"onnx_checker": f"onnx {onnx.__version__}"}


def build_bento(
    model_tag: str,
    *,
    labels: dict[str, str],
    build_ctx: str | Path = REPO,
    bentofile: str | Path | None = None,
) -> str:
    """Build the Bento of `bentofile.yaml` with exactly `model_tag` in its model store; its tag."""
    import bentoml

    ctx = Path(build_ctx)
    config = yaml.safe_load(Path(bentofile or ctx / "bentofile.yaml").read_text())
    if config.get("models"):
        raise PackagingError("bentofile.yaml lists models; the package step chooses the model")
    # The build resolves each listed tag as bentoml.models.BentoModel(tag) and copies exactly
    # that model into the Bento's own model store.
    config["models"] = [model_tag]
    config["labels"] = {**config.get("labels", {}), **labels, "bento_model": model_tag}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bentofile.yaml"
        spec.write_text(yaml.safe_dump(config, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(spec), build_ctx=str(ctx))
    return str(bento.tag)


def package_model(
    model_uri: str,
    *,
    tracking_uri: str,
    export_dir: str | Path | None = None,
    log_archive: bool = False,
    build_ctx: str | Path = REPO,
    int8_data: str | Path | None = None,
    params: Params | None = None,
) -> PackageResult:
    """Resolve → import → build → tag the MLflow version `bento_tag` → export (optional).

    With `int8_data` (a dataset directory) the int8 variant is tried (`import_version`).

    With `log_archive` (needs `export_dir`) the `.bento` is also stored in the version's MLflow
    run under `bento/` and tagged `bento_archive`: the in-cluster image build downloads it.
    """
    import bentoml
    from mlflow import MlflowClient

    version = resolve_version(model_uri, tracking_uri=tracking_uri)
    model_tag = import_version(
        version,
        tracking_uri=tracking_uri,
        params=params,
        int8_data=Path(int8_data) if int8_data is not None else None,
    )
    bento_tag = build_bento(model_tag, labels=version.labels(), build_ctx=build_ctx)
    labels = bentoml.models.get(model_tag).info.labels
    int8 = f"{labels['int8']}: {labels.get('int8_reason', '')}" if "int8" in labels else None
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_model_version_tag(version.name, version.version, BENTO_TAG, bento_tag)
    archive = None
    if export_dir is not None:
        out = Path(export_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = bento_tag.replace(":", "-") + ".bento"
        archive = bentoml.bentos.export_bento(bento_tag, str(out / name))
        if log_archive:
            client.log_artifact(version.run_id, archive, "bento")
            stored = f"runs:/{version.run_id}/bento/{name}"
            client.set_model_version_tag(version.name, version.version, ARCHIVE_TAG, stored)
    log.info("%s v%s packaged as Bento %s", version.name, version.version, bento_tag)
    return PackageResult(bento_tag, model_tag, version.name, version.version, version.run_id,
                         archive, int8 if int8_data is not None else None)  # fmt: skip


def write_build_context(archive: str, out: str | Path, *, tracking_uri: str) -> Path:
    """The Docker build context BentoML generates for a `.bento` (a path or an MLflow artifact
    URI), written to `out`; returns its Dockerfile (`env/docker/Dockerfile`)."""
    import bentoml
    import mlflow
    from bentoml._internal.container import construct_containerfile  # what containerize uses
    from bentoml.exceptions import BentoMLException

    local = archive
    if not Path(archive).is_file():
        local = mlflow.artifacts.download_artifacts(artifact_uri=archive, tracking_uri=tracking_uri)
    try:
        bento = bentoml.bentos.import_bento(local)
    except BentoMLException as e:
        raise PackagingError(f"{archive}: not an importable .bento archive ({e})") from e
    with construct_containerfile(bento, enable_buildkit=True) as (context, _):
        shutil.copytree(context, out, dirs_exist_ok=True)
    return Path(out) / "env/docker/Dockerfile"
