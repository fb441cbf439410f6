"""The data scientist's pages in headless Chromium: the HTML reports with the network cut off, and
the MLflow UI (a real `mlflow server`) showing a pipeline's parent run with its variants.

Reuses the Chromium set-up of tests/integration/test_ui_browser.py. The offline checks need the
vendored report assets (`make report-assets`) and skip without them. Screenshots are kept in
test-artifacts/ (data-docs-offline.png, drift-report-offline.png, mlflow-parent-run.png):

    .venv/bin/pytest tests/integration/test_reports_browser.py -q
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import test_ui_browser as ui

from roadseg import reports
from roadseg.testing import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ARTIFACTS, REPO = ui.ARTIFACTS, ui.REPO
chromium, browser = ui.chromium, ui.browser  # the fixtures, shared with the service UI tests
EXTERNAL = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)=[\"']https?://", re.I)


@pytest.fixture(scope="module")
def assets() -> Path:
    if not (reports.ASSET_DIR / "jquery/dist/jquery.min.js").is_file():
        pytest.skip(f"report assets not fetched into {reports.ASSET_DIR}: run `make report-assets`")
    return reports.ASSET_DIR


def _offline(driver) -> None:
    """Cut the browser off the network: every http(s) request fails, file:// still loads."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )


def _page_state(driver, url: str) -> dict:
    driver.get(url)
    time.sleep(1.0)  # let the page's own scripts (bootstrap-table, React) run
    return driver.execute_script(
        """
        const nav = document.querySelector('.navbar');
        return {
          jquery: typeof window.jQuery,
          bootstrapTable: !!(window.jQuery && jQuery.fn.bootstrapTable),
          navbarDisplay: nav ? getComputedStyle(nav).display : null,
          tableRows: document.querySelectorAll('.bootstrap-table tbody tr').length,
          text: document.body.innerText,
        };"""
    )


def _validate(data_dir: Path, report_dir: Path, params) -> Path:
    from roadseg.data.validation import validate_dataset

    result = validate_dataset(data_dir, params.data, report_dir=report_dir, workers=0,
                              progress=False)  # fmt: skip
    assert result.success
    return result.data_docs_path


def test_data_docs_render_offline(
    assets: Path, browser, synth_dir: Path, params, tmp_path: Path, monkeypatch
) -> None:
    index = _validate(synth_dir, tmp_path / "inlined", params)
    pages = sorted(index.parent.rglob("*.html"))
    assert len(pages) >= 3 and not [p for p in pages if EXTERNAL.search(p.read_text())]
    # the control: the same Data Docs as GX writes them, CDN links left in place
    monkeypatch.setattr(reports, "make_offline_tree", lambda *a, **k: {})
    raw = _validate(synth_dir, tmp_path / "raw", params)
    assert EXTERNAL.search(raw.read_text())

    _offline(browser)
    broken = _page_state(browser, raw.as_uri())
    assert broken["jquery"] == "undefined" and broken["navbarDisplay"] == "block"
    assert broken["tableRows"] == 0
    state = _page_state(browser, index.as_uri())
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "data-docs-offline.png"))
    assert state["jquery"] == "function" and state["bootstrapTable"]
    assert state["navbarDisplay"] == "flex"  # Bootstrap's .navbar rule applied
    assert state["tableRows"] >= 1 and "roadseg-labels" in state["text"]
    suite = next(p for p in pages if "validations" in p.parts)
    result = _page_state(browser, suite.as_uri())
    assert result["navbarDisplay"] == "flex" and "Succeeded" in result["text"]


def test_drift_report_renders_offline(assets: Path, browser, tmp_path: Path) -> None:
    from roadseg.monitor.drift import build_reference_profile, run_drift_report

    rng = np.random.default_rng(0)
    ref = build_reference_profile([rng.integers(0, 255, (32, 48, 3), np.uint8) for _ in range(30)])
    dark = [rng.integers(0, 60, (32, 48, 3), np.uint8) for _ in range(30)]  # clearly drifted
    cur = build_reference_profile(dark)
    result = run_drift_report(ref, cur, threshold=0.5, stattest_threshold=0.05, out_dir=tmp_path)
    html = result.html_path.read_text()
    assert not EXTERNAL.search(html)
    _offline(browser)
    browser.get(result.html_path.as_uri())
    time.sleep(2.0)
    text = browser.execute_script("return document.body.innerText")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "drift-report-offline.png"))
    assert "brightness" in text and "Drift" in text  # the widgets drew with their data


# --------------------------------------------------------------------------- MLflow UI


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` on a free port over a SQLite store holding one pipeline run."""
    import importlib.util

    import httpx
    from mlflow import MlflowClient

    # the hand-made pipeline run of the parent-run tests (tests/pipelines/test_runs.py)
    spec = importlib.util.spec_from_file_location(
        "test_runs", REPO / "tests/pipelines/test_runs.py"
    )
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    EXP, _pipeline = fake.EXP, fake._pipeline

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    client.create_experiment(EXP, artifact_location=(tmp_path / "art").as_uri(),
                             tags={"mlflow.experimentKind": "custom_model_development"})  # fmt: skip
    _, cands, parent = _pipeline(client, uri, "kfp-run-ui", promoted=True)
    port = free_port()
    log = (tmp_path / "mlflow.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited: {(tmp_path / 'mlflow.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        exp_id = client.get_experiment_by_name(EXP).experiment_id
        yield url, exp_id, parent, cands
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_mlflow_ui_shows_parent_run_with_its_variants(browser, mlflow_server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, exp_id, parent, _ = mlflow_server
    browser.get(f"{url}/#/experiments/{exp_id}/runs")
    wait = WebDriverWait(browser, 60)
    name = wait.until(
        ec.presence_of_element_located((By.XPATH, "//a/span[starts-with(text(),'pipeline-')]"))
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Training runs" in body  # mlflow.experimentKind: not the GenAI overview
    assert "wce" not in body.split("\n")  # the variants are nested, hidden until expanded
    row = name.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
    row.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    for loss in ("wce", "dice"):
        wait.until(ec.presence_of_element_located((By.XPATH, f"//a/span[text()='{loss}']")))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-parent-run.png"))
    # the parent's own page: its description carries the registration decision
    browser.get(f"{url}/#/experiments/{exp_id}/runs/{parent}")
    wait.until(
        lambda d: "(dice, val mIoU 0.7500) promoted" in d.find_element(By.TAG_NAME, "body").text
    )
