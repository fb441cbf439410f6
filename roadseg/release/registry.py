"""Model registry: pick the best loss variant, register it, and promote it only through the gates.

`register_best` registers the candidate with the best validation mIoU as a new version of
`register.model_name`, always points alias `challenger` at it, and moves alias `champion` only when
the version passes the gates (mIoU >= `register.min_miou`, no present class below
`register.class_iou_floor`) and beats the current champion by `register.margin`. The decision and its
reason are written to the version's tags (`promotion`, `promotion_reason`) and the log. A drift
reference profile is stored as an artifact of the version's run (tag `drift_reference_profile`)::

    roadseg register --candidates candidates.json --data-dir data/remapped
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from roadseg.config import RegisterParams

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PROFILE_ARTIFACT_DIR = "drift"
PROFILE_FILE = "reference_profile.csv"
PROFILE_TAG = "drift_reference_profile"
MIOU_TAG = "val_miou"


@dataclass(frozen=True)
class Candidate:
    """One trained loss variant: its MLflow run, its logged model and its validation metrics.

    `metrics` holds `segmentation_scores` output: `miou` plus `per_class`, a list of dicts with
    `name`, `iou` and `present` (or a plain mapping name -> IoU).
    """

    loss: str
    run_id: str
    model_uri: str
    metrics: Mapping[str, Any]

    @property
    def miou(self) -> float:
        value = self.metrics.get("miou")
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"candidate {self.loss!r} (run {self.run_id}) has no finite val miou")
        return float(value)

    def class_ious(self) -> dict[str, float]:
        """IoU of each class present in the validation ground truth."""
        per_class = self.metrics.get("per_class") or []
        if isinstance(per_class, Mapping):
            return {str(k): float(v) for k, v in per_class.items()}
        return {
            str(c["name"]): float(c["iou"])
            for c in per_class
            if c.get("present", True) and c.get("iou") is not None
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        missing = {"loss", "run_id", "model_uri", "metrics"} - set(d)
        if missing:
            raise ValueError(f"candidate is missing {sorted(missing)}: {dict(d)}")
        return cls(str(d["loss"]), str(d["run_id"]), str(d["model_uri"]), dict(d["metrics"]))


@dataclass(frozen=True)
class RegistrationResult:
    """What `register_best` did: the new version, whether it became champion, and why."""

    model_name: str
    version: str
    loss: str
    run_id: str
    miou: float
    promoted: bool
    reason: str
    champion_version: str | None
    previous_champion_version: str | None
    profile_uri: str | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    model_card: str | None = None  # runs:/<run>/model_card/model_card.md

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def select_best(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the highest validation mIoU (ties: the first given)."""
    if not candidates:
        raise ValueError("no candidates to register: every training task failed or none ran")
    return max(candidates, key=lambda c: c.miou)


def check_gates(candidate: Candidate, params: RegisterParams) -> list[str]:
    """Reasons the candidate may not become champion on its own merits (empty: it passes)."""
    reasons = []
    if candidate.miou < params.min_miou:
        reasons.append(f"val mIoU {candidate.miou:.4f} < minimum {params.min_miou:.4f}")
    low = {n: v for n, v in candidate.class_ious().items() if v < params.class_iou_floor}
    if low:
        shown = ", ".join(f"{n}={v:.4f}" for n, v in sorted(low.items()))
        reasons.append(f"class IoU below floor {params.class_iou_floor:.4f}: {shown}")
    return reasons


def decide_promotion(
    candidate: Candidate, params: RegisterParams, champion_miou: float | None
) -> tuple[bool, str]:
    """Whether the candidate replaces the champion, and the reason in one line."""
    failed = check_gates(candidate, params)
    if failed:
        return False, "gates failed: " + "; ".join(failed)
    if champion_miou is None:
        return True, f"first champion (val mIoU {candidate.miou:.4f} passes the gates)"
    gain = candidate.miou - champion_miou
    if gain + 1e-12 < params.margin:
        return False, (
            f"val mIoU {candidate.miou:.4f} does not beat champion {champion_miou:.4f} "
            f"by margin {params.margin:.4f} (gain {gain:+.4f})"
        )
    return True, (
        f"val mIoU {candidate.miou:.4f} beats champion {champion_miou:.4f} by {gain:+.4f} "
        f">= margin {params.margin:.4f}"
    )


def register_best(
    candidates: Sequence[Candidate | Mapping[str, Any]],
    register_params: RegisterParams,
    *,
    tracking_uri: str,
    tags: Mapping[str, str] | None = None,
    profile_builder: Callable[[Candidate], pd.DataFrame] | None = None,
    dataset: str = "bdd100k",
) -> RegistrationResult:
    """Register the best candidate, set `challenger`, and move `champion` when it earns it.

    Args:
        candidates: trained variants (or their dicts), each with val metrics.
        register_params: `params.register_` (model name, gates, margin).
        tracking_uri: MLflow tracking (and registry) URI.
        tags: extra version tags, e.g. dataset_version, git_commit, pipeline_run_id, params_hash.
        profile_builder: builds the drift reference profile for the chosen candidate; stored as
            `drift/reference_profile.csv` in its run and referenced by tag `drift_reference_profile`.
        dataset: `data.dataset`; picks the registered model name (`model_name_for`).
    """
    cands = [c if isinstance(c, Candidate) else Candidate.from_dict(c) for c in candidates]
    best = select_best(cands)
    name = register_params.model_name_for(dataset)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    _ensure_registered_model(client, name)
    champion = _current_champion(client, name)
    champion_miou = _version_miou(client, champion) if champion else None
    promoted, reason = decide_promotion(best, register_params, champion_miou)

    source, model_id = _version_source(client, best.model_uri)
    version_tags = {
        **{k: str(v) for k, v in (tags or {}).items()},
        "loss": best.loss,
        MIOU_TAG: f"{best.miou:.6f}",
    }
    mv = client.create_model_version(
        name,
        source,
        run_id=best.run_id,
        tags=version_tags,
        description=describe_problem(best, cands, version_tags),
        model_id=model_id,
    )
    version = str(mv.version)
    _record_decision(client, name, version, best, promoted=promoted, reason=reason,
                     champion=champion)  # fmt: skip

    profile_uri, profile = None, None
    if profile_builder is not None:
        profile = profile_builder(best)
        profile_uri = _store_profile(client, best, profile)
        client.set_model_version_tag(name, version, PROFILE_TAG, profile_uri)
    card_uri = _write_card(client, name, version, best, register_params, version_tags,
                           promotion=("champion: " if promoted else "challenger only: ") + reason,
                           dataset=dataset, profile=profile)  # fmt: skip

    return RegistrationResult(
        model_name=name,
        version=str(version),
        loss=best.loss,
        run_id=best.run_id,
        miou=best.miou,
        promoted=promoted,
        reason=reason,
        champion_version=str(version) if promoted else (champion and str(champion.version)),
        previous_champion_version=str(champion.version) if champion else None,
        profile_uri=profile_uri,
        model_card=card_uri,
        candidates=[
            {"loss": c.loss, "run_id": c.run_id, "model_uri": c.model_uri, **_scalars(c.metrics)}
            for c in cands
        ],
    )


def _record_decision(
    client: MlflowClient,
    name: str,
    version: str,
    best: Candidate,
    *,
    promoted: bool,
    reason: str,
    champion: Any | None,
) -> None:
    """Aliases (`challenger`, and `champion` when promoted) and the decision as version tags."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    if champion is not None:
        client.set_model_version_tag(name, version, "compared_with", f"v{champion.version}")
    log.info(
        "%s v%s (%s): %s — %s",
        name,
        version,
        best.loss,
        "promoted to champion"
        if promoted
        else f"champion stays v{champion.version if champion else '-'}",
        reason,
    )


def _write_card(
    client: MlflowClient,
    name: str,
    version: str,
    best: Candidate,
    params: RegisterParams,
    tags: Mapping[str, str],
    *,
    promotion: str,
    dataset: str,
    profile: pd.DataFrame | None,
) -> str | None:
    """The version's model card (roadseg.release.card); a card that cannot be written is logged
    and tagged `model_card_error`, never a lost registration (the version and aliases exist)."""
    from roadseg.release.card import build_card, log_card

    try:
        card = build_card(client, model_name=name, version=version, run_id=best.run_id,
                          metrics=best.metrics, tags=tags, iou_floor=params.class_iou_floor,
                          promotion=promotion, dataset=dataset, profile=profile)  # fmt: skip
        return log_card(client, card, best.run_id)
    except Exception as e:
        log.exception("%s v%s: no model card", name, version)
        client.set_model_version_tag(name, version, "model_card_error", str(e)[:500])
        return None


def download_reference_profile(
    model_name: str, alias_or_version: str, *, tracking_uri: str, dst: str | Path
) -> Path:
    """Fetch the drift reference profile stored with a registered version (alias or number)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if str(alias_or_version).isdigit():
        mv = client.get_model_version(model_name, str(alias_or_version))
    else:
        mv = client.get_model_version_by_alias(model_name, alias_or_version)
    if PROFILE_TAG not in mv.tags:
        raise FileNotFoundError(f"{model_name} v{mv.version} has no {PROFILE_TAG!r} tag")
    local = client.download_artifacts(mv.run_id, f"{PROFILE_ARTIFACT_DIR}/{PROFILE_FILE}", str(dst))
    return Path(local)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="Road-scene segmentation U-Net; the best loss variant of each pipeline run. "
            "Alias `champion` is served, `challenger` is the latest registered candidate.",
        )


def _current_champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _version_miou(client: MlflowClient, mv: Any) -> float:
    """The champion's val mIoU: our tag, else the run's `val_miou`/`best_val_miou` metric."""
    if MIOU_TAG in mv.tags:
        return float(mv.tags[MIOU_TAG])
    metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    for key in ("best_val_miou", "val_miou", "val/miou", "miou"):
        if key in metrics:
            return float(metrics[key])
    raise ValueError(
        f"champion {mv.name} v{mv.version} has neither a {MIOU_TAG!r} tag nor a val mIoU metric"
    )


def _version_source(client: MlflowClient, model_uri: str) -> tuple[str, str | None]:
    """(source, logged model id) for `create_model_version` from a models:/ or runs:/ URI."""
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/")
        if "/" in ref or "@" in ref:
            raise ValueError(f"{model_uri!r} names a registered model; give the logged model id")
        client.get_logged_model(ref)  # fails early with a clear MLflow error when unknown
        return model_uri, ref
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
        run = client.get_run(run_id)
        found = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        named = [m for m in found if m.name == path] or list(found)
        if named:
            return f"models:/{named[0].model_id}", named[0].model_id
        return f"{run.info.artifact_uri.rstrip('/')}/{path}", None
    return model_uri, None


def _store_profile(client: MlflowClient, best: Candidate, profile: pd.DataFrame) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PROFILE_FILE
        profile.to_csv(path, index=False)
        client.log_artifact(best.run_id, str(path), PROFILE_ARTIFACT_DIR)
    return f"runs:/{best.run_id}/{PROFILE_ARTIFACT_DIR}/{PROFILE_FILE}"


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def describe_problem(best: Candidate, cands: Sequence[Candidate], tags: Mapping[str, str]) -> str:
    others = ", ".join(f"{c.loss}={c.miou:.4f}" for c in cands)
    return (
        f"U-Net trained with the {best.loss} loss: best val mIoU {best.miou:.4f} among {others}. "
        f"Dataset {tags.get('dataset_version', '?')}, params {tags.get('params_hash', '?')}, "
        f"commit {tags.get('git_commit', '?')}, pipeline run {tags.get('pipeline_run_id', '?')}."
    )
