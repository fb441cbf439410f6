"""Pipeline runs in MLflow: one parent run per pipeline run, the loss variants nested under it.

The register step (`roadseg.pipeline.steps.register_step`, locally and on a cluster) calls
`log_parent_run` once the variants are trained, scored and the best one registered. The parent
carries the pipeline run id, data version and params hash, the comparison table (an MLflow
table artifact the UI can show), a per-class IoU chart across the variants and the registration
decision with its reason; the variant runs get it as their `mlflow.parentRunId`. It is created at
the end rather than the start because the variants train in parallel pods (and may come from
the KFP cache): no task before them could hand a run id into the loop that every task sees.

    roadseg runs compare                         # the latest pipeline run
    roadseg runs compare --pipeline-run <KFP run id> | --parent <MLflow run id>
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from roadseg import tracking

ROLE_TAG, ROLE = "roadseg.role", "pipeline"
PIPELINE_RUN_TAG = "roadseg.pipeline_run_id"
PARENT_TAG = "mlflow.parentRunId"  # what makes the MLflow UI nest a run under another
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
COMPARISON_FILE = "comparison.json"
CHART_FILE = "per_class_iou.png"
DECISION_FILE = "registration.json"
# The scores a comparison of loss variants shows: (column label, metric key).
SCORE_COLUMNS = (
    ("Pixel Accuracy", "pixel_accuracy"),
    ("Mean Accuracy", "mean_accuracy"),
    ("Mean IoU", "miou"),
    ("Mean Dice", "mdice"),
)


def comparison_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per loss variant: the four scores, the run id and whether it is the champion."""
    rows = []
    for c in result["candidates"]:
        row = {"loss": c["loss"], "run_id": c["run_id"]}
        row |= {label: c.get(key) for label, key in SCORE_COLUMNS}
        row["registered"] = c["run_id"] == result["run_id"]
        row["champion"] = row["registered"] and bool(result["promoted"])
        rows.append(row)
    return rows


def comparison_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """The table `roadseg pipeline run` prints, one row per loss variant, as a DataFrame."""
    columns = ["loss", *(label for label, _ in SCORE_COLUMNS), "registered", "champion", "run_id"]
    return pd.DataFrame(comparison_rows(result), columns=columns)


def per_class_iou_figure(candidates: Sequence[Mapping[str, Any]]) -> Any:
    """Grouped bars: the IoU of each class (x) for each variant (one colour each).

    Classes absent from the ground truth and never predicted (IoU None) are drawn as gaps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [c["name"] for c in candidates[0]["metrics"]["per_class"]]
    width = 0.8 / max(1, len(candidates))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    for i, cand in enumerate(candidates):
        ious = {c["name"]: c["iou"] for c in cand["metrics"]["per_class"]}
        values = [np.nan if ious.get(n) is None else ious[n] for n in names]
        ax.bar(x + (i - (len(candidates) - 1) / 2) * width, values, width, label=cand["loss"])
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU by loss variant")
    ax.legend(title="loss", fontsize=8)
    fig.tight_layout()
    return fig


def log_parent_run(
    result: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]],
    *,
    tracking_uri: str,
    experiment: str,
    tags: Mapping[str, str],
) -> str:
    """Create the finished parent run of one pipeline run and nest the variant runs under it.

    Args:
        result: `RegistrationResult.to_dict()` of the register step.
        candidates: the scored variants (`loss`, `run_id`, `metrics` with `per_class`).
        tags: `pipeline_run_id`, `dataset_version`, `params_hash`, `git_commit`.

    Returns:
        The parent's run id.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri)
    exp_id = tracking.ensure_experiment(client, experiment)
    verdict = "promoted" if result["promoted"] else "rejected"
    note = (
        f"Pipeline run `{tags.get('pipeline_run_id', '?')}`: {len(candidates)} loss variants. "
        f"{result['model_name']} v{result['version']} ({result['loss']}, val mIoU "
        f"{result['miou']:.4f}) {verdict}: {result['reason']}"
    )
    run_tags = {k: str(v) for k, v in tags.items()} | {
        ROLE_TAG: ROLE,
        PIPELINE_RUN_TAG: str(tags.get("pipeline_run_id", "")),
        "roadseg.decision": verdict,
        "roadseg.decision_reason": result["reason"][:5000],
        NOTE_TAG: note,
    }
    name = f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(exp_id, run_name=name, tags=run_tags)
    parent = run.info.run_id
    params = {**tags, "loss_variants": ",".join(c["loss"] for c in candidates),
              "registered_version": result["version"]}  # fmt: skip
    client.log_batch(
        parent,
        metrics=[Metric("best_val_miou", float(result["miou"]), int(time.time() * 1000), 0)],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
    )
    client.log_table(parent, comparison_frame(result), COMPARISON_FILE)
    client.log_dict(parent, dict(result), DECISION_FILE)
    fig = per_class_iou_figure(candidates)
    client.log_figure(parent, fig, CHART_FILE)
    import matplotlib.pyplot as plt  # after the figure, which picks the Agg backend

    plt.close(fig)
    for cand in candidates:
        client.set_tag(cand["run_id"], PARENT_TAG, parent)
    client.set_terminated(parent, "FINISHED")
    return parent


def find_parent(
    tracking_uri: str,
    experiment: str,
    *,
    parent_run_id: str | None = None,
    pipeline_run_id: str | None = None,
) -> Any:
    """The parent run given by id, by pipeline run id, or else the latest one of `experiment`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    if parent_run_id:
        try:
            run = client.get_run(parent_run_id)
        except MlflowException as e:
            raise ValueError(f"no MLflow run {parent_run_id} at {tracking_uri}") from e
        if run.data.tags.get(ROLE_TAG) != ROLE:
            raise ValueError(f"run {parent_run_id} is not a pipeline run (no {ROLE_TAG}={ROLE})")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no experiment {experiment!r} at {tracking_uri}")
    query = f"tags.`{ROLE_TAG}` = '{ROLE}'"
    if pipeline_run_id:
        query += f" and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}'"
    found = client.search_runs([exp.experiment_id], query, max_results=1,
                               order_by=["attributes.start_time DESC"])  # fmt: skip
    if not found:
        which = f"pipeline run {pipeline_run_id}" if pipeline_run_id else "any pipeline run"
        raise ValueError(f"no parent run for {which} in experiment {experiment!r}")
    return found[0]


def load_registration(tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """The registration result stored with a parent run (what `comparison_rows` reads)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = MlflowClient(tracking_uri).download_artifacts(parent_run_id, DECISION_FILE, tmp)
        except (MlflowException, OSError) as e:
            raise ValueError(f"run {parent_run_id} has no {DECISION_FILE} artifact ({e})") from e
        return json.loads(Path(path).read_text())


def children(tracking_uri: str, parent: Any) -> list[Any]:
    """The variant runs nested under `parent` (an MLflow Run)."""
    from mlflow import MlflowClient

    query = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    return MlflowClient(tracking_uri).search_runs([parent.info.experiment_id], query)


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where the run opens in the MLflow UI: the server's URL, or `mlflow ui` for a local store."""
    page = f"#/experiments/{experiment_id}/runs/{quote(run_id)}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}  →  http://127.0.0.1:5000/{page}"


def parent_link(tracking_uri: str, run_id: str) -> str:
    """`run_link` of a run looked up by id."""
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(run_id)
    return run_link(tracking_uri, run.info.experiment_id, run_id)
