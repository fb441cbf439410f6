"""`roadseg drift` through the Typer app: exit codes, the report files and the Prometheus gauges.

Documented contract (README, "Drift monitoring"): exit 0 when the share of drifted features stays
below `drift.threshold`, 1 when it reaches it, 2 on bad input, with the reason on one line and no
traceback. Reference profiles are small CSVs of feature rows; the current traffic is a monitoring
log written by `MonitorLog`, as the service writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.monitor.drift import IMAGE_FEATURES
from roadseg.monitor.log import MonitorLog

FEATURES = list(IMAGE_FEATURES)


def rows(n: int, seed: int = 0, shift: float = 0.0) -> list[dict[str, float]]:
    """n feature rows drawn from one distribution; `shift` standard deviations added to each.

    Same seed, same first rows: `rows(60)` is the first 60 rows of the reference `rows(80)`, so
    in-distribution traffic cannot drift by the chance of one draw (7 tests at p < 0.05 would
    flag a feature of two independent draws one time in three).
    """
    rng = np.random.default_rng(seed)
    values = rng.normal(0.5 + 0.1 * shift, 0.1, size=(n, len(FEATURES)))
    return [dict(zip(FEATURES, map(float, r), strict=True)) for r in values]


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.csv"
    pd.DataFrame(rows(80)).to_csv(path, index=False)
    return path


def monitor_log(folder: Path, records: list[dict], version: str = "4") -> Path:
    MonitorLog(folder).write(records, model_version=version)
    return folder


def run(*args: str | Path):
    return CliRunner().invoke(app, ["drift", *map(str, args)])


def said(result, text: str) -> bool:
    """`text` is in the command's output, whatever the console wrapped (Rich breaks long lines)."""
    return "".join(text.split()) in "".join(result.output.split())


def gauges(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_no_drift_exits_0_and_writes_every_output(reference: Path, tmp_path: Path) -> None:
    current = monitor_log(tmp_path / "monitoring", rows(60))
    prom = tmp_path / "textfile/roadseg_drift.prom"
    r = run("--reference", reference, "--current", current, "--out", tmp_path / "out",
            "--prom-file", prom)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert said(r, "drift share 0.00 (threshold 0.50); drifted: none;")
    out = tmp_path / "out"
    summary = json.loads((out / "drift_summary.json").read_text())
    assert summary["drifted"] is False and summary["n_reference"] == 80
    assert summary["n_current"] == 60 and set(summary["features"]) == set(FEATURES)
    assert (out / "drift_report.html").stat().st_size > 1000
    assert "metrics" in json.loads((out / "drift_report.json").read_text())
    # the textfile and out/drift.prom hold the same gauges; the version comes from the log
    for text in (prom.read_text(), (out / "drift.prom").read_text()):
        g = gauges(text)
        (share,) = g["roadseg_drift_share"]
        assert share.value == pytest.approx(summary["drift_share"])
        assert share.labels["model_version"] == "4"
        assert g["roadseg_drift_detected"][0].value == 0.0
        assert g["roadseg_drift_threshold"][0].value == 0.5
        assert {s.labels["feature"] for s in g["roadseg_drift_feature_score"]} == set(FEATURES)
        counts = {s.labels["dataset"]: s.value for s in g["roadseg_drift_rows"]}
        assert counts == {"reference": 80.0, "current": 60.0}
    assert not list(prom.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_drift_exits_1_naming_the_drifted_features(reference: Path, tmp_path: Path) -> None:
    current = monitor_log(tmp_path / "monitoring", rows(60, seed=1, shift=3.0))
    r = run("--reference", reference, "--current", current, "--out", tmp_path / "out",
            "--model-version", "12")  # fmt: skip
    assert r.exit_code == 1, r.output
    assert said(r, "data drift: 7/7 features drifted")
    # no --prom-file and no --pushgateway: the gauges go to stdout (messages to stderr)
    g = gauges(r.stdout)
    assert g["roadseg_drift_detected"][0].value == 1.0
    assert g["roadseg_drift_share"][0].value == 1.0
    assert g["roadseg_drift_share"][0].labels["model_version"] == "12"  # the flag wins
    flags = {s.labels["feature"]: s.value for s in g["roadseg_drift_feature_drifted"]}
    assert flags == dict.fromkeys(FEATURES, 1.0)
    assert json.loads((tmp_path / "out/drift_summary.json").read_text())["drifted"] is True


def test_threshold_from_params_decides_the_exit_code(reference: Path, tmp_path: Path) -> None:
    """Two of seven features shifted: below the default 0.5 share, above a 0.25 threshold."""
    cur = rows(60)
    shifted = rows(60, seed=2, shift=3.0)
    for a, b in zip(cur, shifted, strict=True):
        a["brightness"], a["contrast"] = b["brightness"], b["contrast"]
    current = monitor_log(tmp_path / "monitoring", cur)
    args = ["--reference", reference, "--current", current, "--out", tmp_path / "out"]
    low = run(*args)
    assert low.exit_code == 0, low.output
    assert said(low, "drift share 0.29 (threshold 0.50); drifted: brightness, contrast;")
    high = run(*args, "--set", "drift.threshold=0.25")
    assert high.exit_code == 1, high.output
    assert said(high, "data drift: 2/7 features drifted")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_reference", "profile not found"),
        ("empty_log_folder", "no monitoring logs"),
        ("bad_suffix", "unsupported profile format"),
        ("one_row", "drift needs at least 2"),
        ("no_common_columns", "share no numeric feature columns"),
        ("bad_models_uri", "expected models:/name@alias or models:/name/version"),
    ],
)
def test_bad_input_exits_2_with_one_line(case: str, message: str, reference: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    current = monitor_log(tmp_path / "monitoring", rows(30, seed=1))
    ref = str(reference)
    if case == "missing_reference":
        ref = str(tmp_path / "nope.csv")
    elif case == "empty_log_folder":
        (current := tmp_path / "empty").mkdir()
    elif case == "bad_suffix":
        (tmp_path / "ref.txt").write_text("brightness\n0.5\n")
        ref = str(tmp_path / "ref.txt")
    elif case == "one_row":
        current = monitor_log(tmp_path / "one", rows(1, seed=1))
    elif case == "no_common_columns":
        current = monitor_log(tmp_path / "other", [{"other": float(i)} for i in range(10)])
    elif case == "bad_models_uri":
        ref = "models:/roadseg-unet"
    r = run("--reference", ref, "--current", current, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert said(r, message) and "Traceback" not in r.output
    assert not (tmp_path / "out/drift.prom").exists()


def test_unreachable_pushgateway_exits_2(reference: Path, tmp_path: Path) -> None:
    from roadseg.testing import free_port

    current = monitor_log(tmp_path / "monitoring", rows(30, seed=1))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = run("--reference", reference, "--current", current, "--out", tmp_path / "out",
            "--pushgateway", url)  # fmt: skip
    assert r.exit_code == 2, r.output
    assert said(r, f"cannot push to {url}")
