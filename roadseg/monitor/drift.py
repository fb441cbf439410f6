"""Drift monitoring: the reference profile and Evidently drift reports.

The service records `roadseg.monitor.features.image_features` for every served image (never the image
itself) in the monitoring log (`roadseg.monitor.log`); the pipeline stores a reference profile of the training images with each registered model version;
`roadseg drift` compares the two with an Evidently data-drift report::

    roadseg drift --reference models:/roadseg-unet@champion --current monitoring/ --out reports/drift
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Re-exported: profiles and reports are built from the same features the service logs.
from roadseg.monitor.features import IMAGE_FEATURES, image_features, share_column  # noqa: F401

# The Pushgateway job of the drift gauges (k8s/base/monitoring/prometheusrule.yaml selects it).
PUSHGATEWAY_JOB = "roadseg-drift"
# Columns of a profile / monitoring log that are metadata, not features.
META_COLUMNS = ("timestamp", "model_version", "image_id", "width", "height")


def build_reference_profile(
    images: Iterable[np.ndarray],
    predictions: Iterable[Any] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    image_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """One row of `image_features` per image: the distribution served traffic is compared with.

    Args:
        images: RGB uint8 images (e.g. the training split, or a sample of it).
        predictions: matching predictions (same order), or None for image features only.
        class_names: passed to `image_features`.
        image_ids: optional identifiers stored in an `image_id` column.
    """
    preds = iter(predictions) if predictions is not None else None
    ids = iter(image_ids) if image_ids is not None else None
    rows = []
    for img in images:
        pred = next(preds, None) if preds is not None else None
        row: dict[str, Any] = image_features(img, pred, class_names=class_names)
        if ids is not None:
            row["image_id"] = str(next(ids))
        rows.append(row)
    if not rows:
        raise ValueError("no images given for the reference profile")
    return pd.DataFrame(rows)


def save_profile(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a profile as CSV (or parquet when the suffix is .parquet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def load_profile(path: str | Path) -> pd.DataFrame:
    """Read a profile written by `save_profile`, or a monitoring log (JSONL file or folder of them)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl*"))
        if not files:
            raise FileNotFoundError(f"no monitoring logs (*.jsonl) in {path}")
        return pd.concat([_read_jsonl(f) for f in files], ignore_index=True)
    if not path.is_file():
        raise FileNotFoundError(f"profile not found: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if ".jsonl" in path.name:
        return _read_jsonl(path)
    raise ValueError(f"unsupported profile format {path.suffix!r} (use .csv, .parquet or .jsonl)")


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write: skip it, keep the rest
    return pd.DataFrame(rows)


# --- drift report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature: Evidently's score, the test behind it and its verdict."""

    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """Outcome of `run_drift_report`."""

    drift_share: float
    threshold: float
    features: dict[str, FeatureDrift]
    n_reference: int
    n_current: int
    html_path: Path | None = None
    json_path: Path | None = None
    timestamp: float = field(default_factory=time.time)

    @property
    def drifted(self) -> bool:
        """True when the share of drifted features reaches the alarm threshold."""
        return self.drift_share >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift_share": self.drift_share,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "timestamp": self.timestamp,
            "features": {k: asdict(v) for k, v in self.features.items()},
        }


def feature_columns(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Numeric feature columns present in both frames (metadata columns excluded)."""
    cols = []
    for c in reference.columns:
        if c in META_COLUMNS or c not in current.columns:
            continue
        if pd.api.types.is_numeric_dtype(reference[c]) and pd.api.types.is_numeric_dtype(
            current[c]
        ):
            cols.append(c)
    return cols


def run_drift_report(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    *,
    threshold: float,
    stattest_threshold: float,
    out_dir: str | Path | None = None,
    columns: Sequence[str] | None = None,
) -> DriftResult:
    """Evidently 0.7 data-drift report of current traffic against the reference profile.

    Evidently picks the test per column (K-S / chi² / Z p-values for references up to 1000
    rows, Wasserstein / Jensen-Shannon distances above). `stattest_threshold` is a p-value, so it
    is only passed for the small-reference case; the distances keep Evidently's defaults.

    Args:
        reference_df: the profile stored with the model (training distribution).
        current_df: monitoring features of served images.
        threshold: share of drifted features that counts as dataset drift.
        stattest_threshold: p-value below which one feature counts as drifted.
        out_dir: where to write `drift_report.html`, `drift_report.json`, `drift_summary.json`.
        columns: features to compare (default: numeric columns common to both frames).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = list(columns) if columns is not None else feature_columns(reference_df, current_df)
    if not cols:
        raise ValueError("reference and current data share no numeric feature columns")
    for name, df in (("reference", reference_df), ("current", current_df)):
        if len(df) < 2:
            raise ValueError(f"{name} data has {len(df)} rows; drift needs at least 2")
    ref = reference_df[cols].astype(float)
    cur = current_df[cols].astype(float)
    definition = DataDefinition(numerical_columns=cols)
    col_threshold = stattest_threshold if len(ref) <= 1000 else None
    report = Report(
        [DataDriftPreset(columns=cols, drift_share=threshold, threshold=col_threshold)],
        include_tests=True,
    )
    with np.errstate(all="ignore"):
        # Evidently 0.7: run(current, reference) — current FIRST.
        snapshot = report.run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    result = _parse_snapshot(snapshot.dict(), threshold, len(ref), len(cur))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        html, js = out / "drift_report.html", out / "drift_report.json"
        snapshot.save_html(str(html))
        from roadseg.reports import make_offline_tree

        make_offline_tree(html)  # opens with no network (air-gapped clusters)
        snapshot.save_json(str(js))
        result = DriftResult(**{**result.__dict__, "html_path": html, "json_path": js})
        (out / "drift_summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _parse_snapshot(snap: dict[str, Any], threshold: float, n_ref: int, n_cur: int) -> DriftResult:
    verdicts: dict[str, bool] = {}
    for test in snap.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift"):
            verdicts[params["column"]] = test["status"] == "FAIL"
    features: dict[str, FeatureDrift] = {}
    share = None
    for metric in snap["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif cfg["type"].endswith("ValueDrift"):
            col = cfg["column"]
            features[col] = FeatureDrift(
                score=float(metric["value"]),
                method=str(cfg.get("method")),
                threshold=float(cfg.get("threshold") or 0.0),
                drifted=verdicts.get(col, False),
            )
    if share is None:
        share = sum(f.drifted for f in features.values()) / max(len(features), 1)
    return DriftResult(share, threshold, features, n_ref, n_cur)


def drift_registry(result: DriftResult, model_version: str):
    """A prometheus_client registry holding the drift gauges (for textfile or Pushgateway)."""
    from prometheus_client import CollectorRegistry, Gauge

    from roadseg import __version__

    reg = CollectorRegistry()
    mv = ["model_version"]
    Gauge(
        "roadseg_drift_share", "Share of monitored features that drifted", mv, registry=reg
    ).labels(model_version).set(result.drift_share)
    Gauge("roadseg_drift_threshold", "Drift share that raises the alarm", mv, registry=reg).labels(
        model_version
    ).set(result.threshold)
    Gauge(
        "roadseg_drift_detected", "1 when the drift share reached the threshold", mv, registry=reg
    ).labels(model_version).set(float(result.drifted))
    score = Gauge(
        "roadseg_drift_feature_score",
        "Evidently drift score per feature (p-value or distance, see method)",
        ["feature", "method", "model_version"],
        registry=reg,
    )
    flag = Gauge(
        "roadseg_drift_feature_drifted",
        "1 when the feature drifted",
        ["feature", "model_version"],
        registry=reg,
    )
    for name, f in sorted(result.features.items()):
        score.labels(name, f.method, model_version).set(f.score)
        flag.labels(name, model_version).set(float(f.drifted))
    rows = Gauge("roadseg_drift_rows", "Rows compared", ["dataset", "model_version"], registry=reg)
    rows.labels("reference", model_version).set(result.n_reference)
    rows.labels("current", model_version).set(result.n_current)
    Gauge(
        "roadseg_drift_report_timestamp_seconds",
        "When the report ran (unix time)",
        ["model_version", "build"],
        registry=reg,
    ).labels(model_version, __version__).set(result.timestamp)
    return reg


def prometheus_text(result: DriftResult, model_version: str) -> str:
    """The drift gauges in the Prometheus text exposition format (node-exporter textfile)."""
    from prometheus_client import generate_latest

    return generate_latest(drift_registry(result, model_version)).decode()


def write_prom_file(text: str, path: str | Path) -> Path:
    """Write atomically (tmp + rename) so node-exporter never reads a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def publish_gauges(
    result: DriftResult,
    model_version: str,
    *,
    prom_file: str | Path | None = None,
    pushgateway: str | None = None,
) -> str:
    """Write the drift gauges to a node-exporter textfile and/or push them to a Pushgateway
    (job `roadseg-drift`, which the alert rules select); returns them as Prometheus text.

    Raises:
        OSError: the Pushgateway could not be reached.
    """
    text = prometheus_text(result, model_version)
    if prom_file:
        write_prom_file(text, prom_file)
    if pushgateway:
        from prometheus_client import push_to_gateway

        registry = drift_registry(result, model_version)
        push_to_gateway(pushgateway, job=PUSHGATEWAY_JOB, registry=registry)
    return text


def resolve_reference(
    reference: str, *, tracking_uri: str, dst: str | Path
) -> tuple[pd.DataFrame, str | None]:
    """A reference profile from a file, or from the registered version behind a models:/ URI.

    Returns the profile and the model version it belongs to (None for a plain file).
    `models:/name@alias` and `models:/name/version` read the artifact `drift/reference_profile.csv`
    stored with that version by `roadseg.release.registry.register_best`.
    """
    if not reference.startswith("models:/"):
        return load_profile(reference), None
    from mlflow import MlflowClient

    from roadseg.release.registry import download_reference_profile

    rest = reference[len("models:/") :]
    name, sep, which = rest.partition("@") if "@" in rest else rest.partition("/")
    if not sep or not name or not which:
        raise ValueError(
            f"reference {reference!r}: expected models:/name@alias or models:/name/version"
        )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = (
        client.get_model_version(name, which)
        if which.isdigit()
        else client.get_model_version_by_alias(name, which)
    )
    path = download_reference_profile(name, str(mv.version), tracking_uri=tracking_uri, dst=dst)
    return load_profile(path), str(mv.version)


def check_drift(
    reference: str,
    current: str | Path,
    out_dir: str | Path,
    drift_params: Any,
    *,
    tracking_uri: str,
    model_version: str | None = None,
) -> tuple[DriftResult, str]:
    """`roadseg drift`: resolve the reference, load the monitoring logs, run the report.

    Returns the result and the model version labelling the gauges (they are also written to
    `out_dir/drift.prom`). The model
    version labelling the gauges is, in order: the argument, the registered version of the
    reference, or the most common version in the logs.
    """
    out = Path(out_dir)
    cur_df = load_profile(current)
    if cur_df.empty:  # a log that exists but holds no record: nothing served since rotation
        raise ValueError(f"empty monitoring log: {current} holds no served images")
    ref_df, ref_version = resolve_reference(
        reference, tracking_uri=tracking_uri, dst=out / "reference"
    )
    if model_version is None:
        model_version = ref_version
    if model_version is None and "model_version" in cur_df.columns and len(cur_df):
        model_version = str(cur_df["model_version"].astype(str).mode().iloc[0])
    result = run_drift_report(
        ref_df,
        cur_df,
        threshold=drift_params.threshold,
        stattest_threshold=drift_params.stattest_threshold,
        out_dir=out,
    )
    model_version = model_version or "unknown"
    write_prom_file(prometheus_text(result, model_version), out / "drift.prom")
    return result, model_version
