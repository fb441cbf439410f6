"""Promote a registered version to `champion` by hand, only through the gates.

`roadseg promote models:/roadseg-unet@challenger` resolves the URI to one version and checks it
against the registry's gates (`roadseg.release.registry.check_gates`: val mIoU >=
`register.min_miou`, no measured class under `register.class_iou_floor`) and, when
`register.shadow_min_images` / `register.shadow_min_agreement` are set, against the shadow
evidence the service recorded on the version (`roadseg.release.evidence`). Only when every gate
passes does alias `champion` move; the version is tagged with who and when (`promoted_by`,
`promoted_at`, `promoted_from`, `promotion`, `promotion_reason`) and the replaced champion with
`replaced_by` / `replaced_at`. A refusal changes nothing and names each failed gate.

The margin over the champion (`register.margin`) is the rule of the automatic promotion at
registration; a promotion by hand is the decision to take a challenger that did not clear it, on
the evidence of the gates (shadow agreement on live traffic included), so it is not a gate here.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from roadseg.config import RegisterParams
from roadseg.release.evidence import read_evidence
from roadseg.release.registry import (
    CHAMPION,
    Candidate,
    _current_champion,
    _version_miou,
    check_gates,
)

log = logging.getLogger(__name__)


class PromotionError(ValueError):
    """The URI names no registered version (bad form, unknown model, alias or version)."""


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` did: the version, whether `champion` moved, the gates passed and failed."""

    model_name: str
    version: str
    previous_champion: str | None
    promoted: bool
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    by: str | None = None
    at: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line: what happened."""
        ref = f"{self.model_name} v{self.version}"
        if self.note:
            return f"{ref}: {self.note}"
        if self.promoted:
            was = f" (was v{self.previous_champion})" if self.previous_champion else ""
            return f"{ref} -> champion{was}, by {self.by} at {self.at}"
        stays = f"champion stays v{self.previous_champion}" if self.previous_champion else (
            "no champion")  # fmt: skip
        return f"{ref} not promoted ({len(self.failed)} gate(s) failed); {stays}"


def default_actor() -> str:
    """Who promotes: $ROADSEG_PROMOTED_BY, else user@host."""
    if os.environ.get("ROADSEG_PROMOTED_BY"):
        return os.environ["ROADSEG_PROMOTED_BY"]
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the container's passwd
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def resolve_version(client: MlflowClient, model_uri: str) -> Any:
    """The ModelVersion behind `models:/name@alias` or `models:/name/N`."""
    rest = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else ""
    name, at, alias = rest.partition("@")
    if not at:
        name, _, alias = rest.partition("/")
    if not name or not alias or "/" in alias or (not at and not alias.isdigit()):
        raise PromotionError(
            f"{model_uri!r}: expected models:/name@alias or models:/name/<version>"
        )
    try:
        if at:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, alias)
    except MlflowException as e:
        raise PromotionError(
            f"{model_uri}: no such registered version ({_first_line(e)})"
        ) from None


def version_metrics(client: MlflowClient, mv: Any) -> dict[str, Any]:
    """A registered version's validation scores, as the registry compared them: mIoU from the
    version's `val_miou` tag (else the run's metric) and IoU per class from the evaluation the
    run logged (`evaluation/eval_val.json`), else the run's `eval_val_iou/<class>` or
    `best_val_iou/<class>` metrics; no per-class entry when neither was logged."""
    metrics: dict[str, Any] = {"miou": _version_miou(client, mv)}
    if not mv.run_id:
        return metrics
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(mv.run_id, "evaluation/eval_val.json", tmp)
            evaluation = json.loads(Path(path).read_text())
        except Exception:  # the DVC route, or older runs, log no evaluation JSON
            evaluation = {}
    if evaluation.get("per_class"):
        metrics["per_class"] = evaluation["per_class"]
        return metrics
    run_metrics = client.get_run(mv.run_id).data.metrics
    for prefix in ("eval_val_iou/", "best_val_iou/"):
        found = {k.removeprefix(prefix): v for k, v in run_metrics.items() if k.startswith(prefix)}
        if found:
            metrics["per_class"] = found
            break
    return metrics


def check_promotion(
    client: MlflowClient, mv: Any, params: RegisterParams
) -> tuple[list[str], list[str]]:
    """(gates passed, gates failed) of a registered version, one line each."""
    passed: list[str] = []
    try:
        metrics = version_metrics(client, mv)
    except ValueError as e:
        return passed, [f"val mIoU: {e}"]
    cand = Candidate(str(mv.tags.get("loss", "?")), str(mv.run_id), str(mv.source), metrics)
    failed = check_gates(cand, params)
    if not any("minimum" in f for f in failed):
        passed.append(f"val mIoU {cand.miou:.4f} >= minimum {params.min_miou:.4f}")
    if params.class_iou_floor > 0 and "per_class" not in metrics:
        failed.append(f"class IoU floor {params.class_iou_floor:.4f}: no per-class IoU recorded")
    elif not any("floor" in f for f in failed):
        passed.append(f"no measured class IoU below floor {params.class_iou_floor:.4f}")

    evidence = read_evidence(mv.tags)
    if params.shadow_min_images > 0:
        line = f"shadow images {evidence.images} {{}} minimum {params.shadow_min_images}"
        ok = evidence.images >= params.shadow_min_images
        (passed if ok else failed).append(line.format(">=" if ok else "<"))
    if params.shadow_min_agreement > 0:
        need = f"minimum {params.shadow_min_agreement:.4f}"
        if evidence.agreement is None:
            failed.append(f"shadow agreement: none recorded ({need})")
        elif evidence.agreement < params.shadow_min_agreement:
            failed.append(f"shadow agreement {evidence.agreement:.4f} < {need} "
                          f"(over {evidence.images} images)")  # fmt: skip
        else:
            passed.append(f"shadow agreement {evidence.agreement:.4f} >= {need} "
                          f"(over {evidence.images} images)")  # fmt: skip
    return passed, failed


def promote(
    model_uri: str,
    params: RegisterParams,
    *,
    tracking_uri: str,
    by: str | None = None,
    dry_run: bool = False,
) -> PromotionResult:
    """Move alias `champion` to the version `model_uri` names when every gate passes.

    Raises `PromotionError` when the URI names no version. A version that already is the
    champion is left as it is (`note` says so, `promoted` False, nothing failed)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = resolve_version(client, model_uri)
    name, version = mv.name, str(mv.version)
    champion = _current_champion(client, name)
    previous = str(champion.version) if champion is not None else None
    if previous == version:
        return PromotionResult(
            name, version, previous, False, note="already the champion; nothing to do"
        )
    passed, failed = check_promotion(client, mv, params)
    if failed or dry_run:
        note = "dry run: every gate passes" if dry_run and not failed else ""
        return PromotionResult(name, version, previous, False, passed, failed, note=note)

    actor = by or default_actor()
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        "promotion": "promoted",
        "promotion_reason": "roadseg promote: " + "; ".join(passed),
        "promoted_by": actor,
        "promoted_at": at,
        "promoted_from": f"v{previous}" if previous else "none",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    if previous is not None:
        client.set_model_version_tag(name, previous, "replaced_by", f"v{version}")
        client.set_model_version_tag(name, previous, "replaced_at", at)
    log.info("%s v%s promoted to champion by %s (was v%s)", name, version, actor, previous)
    return PromotionResult(name, version, previous, True, passed, [], by=actor, at=at)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__
