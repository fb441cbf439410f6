"""The closed loop on one machine (scripts/loop_demo.py, `make loop-demo`): serve the champion,
drifted traffic, a drift check that logs its report and starts nothing while the dataset is
unchanged, new data, exactly one drift-started run whose version becomes @challenger, shadow
agreement on live traffic, `roadseg promote`, the follower repackages and the service reports the
new version, and each version's model card at /model-card. Slow: two tiny pipeline runs, two
packagings and three `bentoml serve` starts (about 5 min on a 2-core machine)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("loop")
    out = work / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/loop_demo.py"), "--work", str(work / "run"),
         "--port", str(_free_port()), "--json", str(out)],
        capture_output=True, text=True, timeout=1100, cwd=REPO,
    )  # fmt: skip
    assert out.is_file(), (
        f"the demonstration stopped:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "loop closed" in proc.stdout
    return json.loads(out.read_text())


def test_the_champion_is_served_with_its_model_card(summary: dict) -> None:
    v1 = summary["v1"]
    assert v1["served"] == v1["version"] == "1" and v1["bento"].startswith("roadseg:")
    assert v1["card_status"] == 200 and v1["card_title"].endswith(" v1")


def test_drift_without_new_data_logs_the_report_and_starts_no_run(summary: dict) -> None:
    check = summary["check1"]
    assert check["exit"] == 1  # drift
    assert check["decision"].startswith("drift, no new labelled data since ")
    assert len(check["reports"]) == 1 and check["reports"][0].startswith("drift/")
    assert check["versions"] == 1


def test_new_data_starts_exactly_one_run_whose_version_is_the_challenger(summary: dict) -> None:
    check = summary["check2"]
    assert check["exit"] == 1 and "training started" in check["decision"]
    assert check["versions"] == 2 and "registered=roadseg-unet v2" in check["retrain_run"]
    assert check["challenger"] == "2" and check["champion"] == "1"


def test_shadow_traffic_accumulates_agreement(summary: dict) -> None:
    shadow = summary["shadow"]
    assert shadow["images"] >= 16 and 0.0 <= shadow["agreement"] <= 1.0


def test_promote_moves_the_champion_and_the_release_follows(summary: dict) -> None:
    assert summary["promote"] == {"exit": 0, "champion": "2"}
    v2 = summary["v2"]
    assert v2["follow"] == "deployed" and v2["served"] == "2"
    assert v2["bento_served"] == v2["bento"] != summary["v1"]["bento"]
    assert v2["card_status"] == 200 and v2["card_title"].endswith(" v2")
    assert v2["again"] == "none"  # the follow is idempotent
