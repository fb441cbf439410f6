"""The web UI at /ui, driven in headless Chromium against a live `bentoml serve`.

Needs Debian's `chromium` and `chromium-driver`: the `chromium` fixture installs them with apt-get
when they are missing and the tests run as root, and skips otherwise. Selenium is always pointed at
/usr/bin/chromium and /usr/bin/chromedriver with SE_OFFLINE=1, so Selenium Manager never downloads
a browser. The service loads a tiny U-Net registered in a temporary MLflow store. Run with:

    .venv/bin/pytest tests/integration/test_ui_browser.py -q

The last page is saved as test-artifacts/ui.png (test-artifacts/ui-api-key.png with a key).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from roadseg.testing import free_port, package_champion

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "ui-test-key-42"
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
    # Live mode: Chromium's synthetic camera, allowed without a permission prompt
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


# --------------------------------------------------------------------------- browser


def _apt_install() -> str | None:
    """Install chromium + chromium-driver; None on success, else why it failed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    result = None
    for update_first in (False, True):  # the package lists may be missing or stale
        if update_first:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if result.returncode == 0:
            return None
    return (result.stderr or result.stdout).strip()[-500:]


@pytest.fixture(scope="session")
def chromium() -> tuple[Path, Path]:
    """Paths of the system Chromium and its driver, installed with apt-get when missing."""
    pytest.importorskip("selenium")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(
                "chromium/chromedriver missing: run `apt-get install chromium chromium-driver`"
            )
        problem = _apt_install()
        if problem is not None or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
            pytest.skip(f"could not install chromium + chromium-driver with apt-get: {problem}")
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def browser(
    chromium: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """A fresh headless Chromium (own profile, so localStorage starts empty) that saves downloads
    to tmp_path/downloads."""
    monkeypatch.setenv("SE_OFFLINE", "1")  # never let Selenium Manager fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


# --------------------------------------------------------------------------- service


@dataclass(frozen=True)
class LiveService:
    url: str
    api_key: str | None
    run_id: str
    version: str
    backend: str


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A toy road scene: blue-ish sky over a grey road, with pixel noise (RGB uint8)."""
    image = np.empty((height, width, 3), np.uint8)
    image[: height // 2] = (90, 140, 200)
    image[height // 2 :] = (110, 110, 110)
    return np.clip(image + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)


def _fit_sky_over_road(model, spec) -> None:
    """A few optimiser steps so the tiny model predicts sky and road, not one class everywhere
    (an untrained net does), which makes the mask, overlay and chart worth looking at."""
    import torch
    import torch.nn.functional as F

    from roadseg.inference.predict import preprocess

    torch.manual_seed(0)
    h, w = spec.image_size
    rng = np.random.default_rng(0)
    x = preprocess([_scene(rng, h, w) for _ in range(8)], spec)
    y = torch.zeros(8, h, w, dtype=torch.long)  # road
    y[:, : h // 2] = spec.class_names.index("sky")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()


def _register_tiny_model() -> None:
    """Log a tiny U-Net as version 1 of roadseg-unet, alias champion, and print its run id.

    Runs in a child process (see `tiny_store`), so MLflow's global tracking URI and the working
    directory of the test session are left alone.
    """
    import mlflow
    from mlflow import MlflowClient

    from roadseg.config import load_params
    from roadseg.models import build_model
    from roadseg.models.bento import CARD_HTML, CARD_MD
    from roadseg.models.io import log_model
    from roadseg.models.spec import ModelSpec
    from roadseg.release.card import CARD_TAG

    params = load_params(
        REPO / "params.yaml",
        overrides=["train.image_size=[32,48]", "model.base_channels=4", "model.name=unet"],
    )
    spec = ModelSpec.from_params(params, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25))
    model = build_model(
        "unet", in_channels=3, num_classes=spec.num_classes, base_channels=spec.base_channels
    )
    _fit_sky_over_road(model, spec)
    mlflow.set_experiment("ui-test")
    with mlflow.start_run() as run:
        log_model(model, spec, registered_model_name="roadseg-unet")
        # its model card, where registration puts one (GET /model-card reads it from the run)
        mlflow.log_text("# Model card: tiny test model\n", CARD_MD)
        mlflow.log_text("<!doctype html><h1>Model card: tiny test model</h1>", CARD_HTML)
    client = MlflowClient()
    client.set_registered_model_alias("roadseg-unet", "champion", "1")
    # the version tag registration sets beside its card: `roadseg package` copies the card then
    client.set_model_version_tag(
        "roadseg-unet", "1", CARD_TAG, f"runs:/{run.info.run_id}/{CARD_MD}"
    )
    print(run.info.run_id)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A temporary MLflow store (sqlite + ./mlartifacts) holding roadseg-unet@champion."""
    store = tmp_path_factory.mktemp("mlflow")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlruns.db'}",
        "OMP_NUM_THREADS": "1",  # tiny tensors: threads only add contention
    }
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_ui_browser import _register_tiny_model; _register_tiny_model()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=store,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return store, result.stdout.strip().splitlines()[-1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"service not ready after {timeout}s:\n{log.read_text()[-3000:]}")


# "onnx-bento": the champion packaged as a Bento and served from it by ONNX Runtime, with MLflow
# unreachable (issue: a Bento with the ONNX model passes the web UI's tests).
@pytest.fixture(
    scope="module", params=[None, API_KEY, "onnx-bento"], ids=["open", "api-key", "onnx-bento"]
)
def live_service(
    request: pytest.FixtureRequest, tiny_store: tuple[Path, str]
) -> Iterator[LiveService]:
    """`bentoml serve bento.service:RoadSegService` on a free port, without and with an API key,
    and the packaged Bento in ONNX Runtime."""
    store, run_id = tiny_store
    port = free_port()
    api_key = None if request.param == "onnx-bento" else request.param
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlruns.db'}",
        "ROADSEG_MODEL_URI": "models:/roadseg-unet@champion",
        "ROADSEG_MONITOR_DIR": str(store / f"monitoring-{port}"),
        "BENTOML_HOME": str(store / "bentoml"),
        "ROADSEG_API_KEY": api_key or "",
    }
    target, version, cwd = "bento.service:RoadSegService", "1", REPO
    if request.param == "onnx-bento":
        target = package_champion(f"sqlite:///{store / 'mlruns.db'}", store / "bentoml", store)
        version, cwd = f"1+{target}", store  # not the repository: the Bento is self-contained
        env |= {
            "ROADSEG_BACKEND": "onnxruntime",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        }
        del env["ROADSEG_MODEL_URI"]
    log = store / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "bentoml", "serve", target]
    cmd += ["--port", str(port), "--host", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        if request.param == "onnx-bento":
            import httpx

            assert httpx.get(f"{url}/metadata", timeout=30).json()["backend"] == "onnxruntime"
        backend = "onnxruntime" if request.param == "onnx-bento" else "torch"
        yield LiveService(url, api_key, run_id, version, backend)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- helpers


def _png(path: Path, seed: int, size: tuple[int, int] = (64, 96)) -> Path:
    Image.fromarray(_scene(np.random.default_rng(seed), *size)).save(path)
    return path


def _service_json(service: LiveService, path: Path) -> tuple[int, dict]:
    """What the service itself answers for one upload to /segment/json."""
    import httpx

    headers = {"X-API-Key": service.api_key} if service.api_key else {}
    with path.open("rb") as f:
        r = httpx.post(
            f"{service.url}/segment/json",
            files={"image": (path.name, f)},
            headers=headers,
            timeout=60,
        )
    return r.status_code, r.json()


def _mp4(path: Path, frames: int) -> Path:
    """A short H.264 clip of toy scenes, written with the ffmpeg the service itself uses."""
    import imageio_ffmpeg

    rng = np.random.default_rng(7)
    writer = imageio_ffmpeg.write_frames(str(path), (96, 64), fps=10, macro_block_size=1)
    writer.send(None)
    for _ in range(frames):
        writer.send(_scene(rng, 64, 96))
    writer.close()
    return path


# Drops a PNG drawn in the page onto the drop zone, as a user dragging a file would.
DROP_PNG_JS = """
const name = arguments[0];
const canvas = document.createElement('canvas'); canvas.width = 80; canvas.height = 48;
const ctx = canvas.getContext('2d');
ctx.fillStyle = 'rgb(90,140,200)'; ctx.fillRect(0, 0, 80, 24);
ctx.fillStyle = 'rgb(110,110,110)'; ctx.fillRect(0, 24, 80, 24);
canvas.toBlob((blob) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], name, {type: 'image/png'}));
  const zone = document.getElementById('drop-zone');
  for (const type of ['dragenter', 'dragover', 'drop']) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
  }
}, 'image/png');
"""

# Records every progress label (and whether the bar was indeterminate) into window.progressSteps.
RECORD_PROGRESS_JS = """
window.progressSteps = [];
const label = document.getElementById('progress-label');
const bar = document.getElementById('progress-bar');
new MutationObserver(() => window.progressSteps.push(
  label.textContent + '|' + (bar.hasAttribute('value') ? 'determinate' : 'indeterminate')
)).observe(label, {childList: true, characterData: true, subtree: true});
"""

# Mean absolute difference between the overlay canvas and another canvas/image of the same card.
PIXEL_DIFF_JS = """
const card = arguments[0], other = arguments[1];
const overlay = card.querySelector('canvas.overlay');
const w = overlay.width, h = overlay.height;
const a = overlay.getContext('2d').getImageData(0, 0, w, h).data;
let b;
if (other === 'mask') {
  b = card.querySelector('canvas.mask').getContext('2d').getImageData(0, 0, w, h).data;
} else {
  const c = document.createElement('canvas'); c.width = w; c.height = h;
  const ctx = c.getContext('2d'); ctx.drawImage(card.querySelector('img.original'), 0, 0, w, h);
  b = ctx.getImageData(0, 0, w, h).data;
}
let sum = 0;
for (let i = 0; i < a.length; i += 4) sum += Math.abs(a[i] - b[i]) + Math.abs(a[i+1] - b[i+1]) + Math.abs(a[i+2] - b[i+2]);
return sum / (w * h * 3);
"""


# --------------------------------------------------------------------------- the scenario


def test_ui_segments_uploads_end_to_end(
    browser, live_service: LiveService, params, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver, service = browser, live_service
    wait = WebDriverWait(driver, 90)
    driver.get(f"{service.url}/ui")
    assert driver.current_url.endswith("/ui/"), driver.current_url  # assets resolve under /ui/

    if service.api_key:
        # Without the key the service answers 401 and the page says so, naming the header.
        banner = wait.until(
            lambda d: (
                d.find_element(By.ID, "banner").is_displayed() and d.find_element(By.ID, "banner")
            )
        )
        assert "X-API-Key" in banner.text
        assert not driver.find_elements(By.CSS_SELECTOR, "#legend li")
        field = driver.find_element(By.ID, "api-key")
        field.send_keys(service.api_key, Keys.ENTER)
        stored = driver.execute_script("return localStorage.getItem('roadseg.apiKey')")
        assert stored == service.api_key

    # Legend: the served model's 14 classes, in id order, with their colours.
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend li")) == params.data.num_classes
    )
    items = driver.find_elements(By.CSS_SELECTOR, "#legend li")
    assert [li.text for li in items] == [c.name for c in params.data.class_table]
    swatch = (
        items[0].find_element(By.CSS_SELECTOR, ".swatch").value_of_css_property("background-color")
    )
    assert swatch.replace(" ", "") in {"rgb(128,64,128)", "rgba(128,64,128,1)"}
    assert not driver.find_element(By.ID, "banner").is_displayed()

    # Model name, version, backend and MLflow run from /metadata.
    assert driver.find_element(By.ID, "model-name").text == "roadseg-unet"
    assert driver.find_element(By.ID, "model-version").text == service.version
    assert driver.find_element(By.ID, "model-backend").text == service.backend
    assert driver.find_element(By.ID, "model-run").text == service.run_id
    # The header links the version's model card, fetched with the API key when there is one.
    assert driver.find_element(By.ID, "model-card-item").is_displayed()
    card_text = driver.execute_async_script(
        "const done = arguments[1];"
        "fetch(arguments[0].href).then(r => r.text()).then(done, e => done(String(e)));",
        driver.find_element(By.ID, "model-card-link"),
    )
    assert "Model card: tiny test model" in card_text

    # Upload one image: the card shows original | mask | overlay at the image's resolution.
    image = _png(tmp_path / "street.png", seed=1)
    upload = driver.find_element(By.ID, "file-input")
    upload.send_keys(str(image))
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card[data-state=done]"))
    overlay = card.find_element(By.CSS_SELECTOR, "canvas.overlay")
    assert (overlay.get_attribute("width"), overlay.get_attribute("height")) == ("96", "64")
    assert "street.png" in card.find_element(By.CSS_SELECTOR, "img.original").get_attribute("alt")
    assert "model version 1" in card.find_element(By.CSS_SELECTOR, ".meta").text

    # Chart: one bar per class, holding exactly the shares the service computed for this image.
    bars = card.find_elements(By.CSS_SELECTOR, ".share-chart g.bar")
    assert [b.get_attribute("data-class") for b in bars] == [
        c.name for c in params.data.class_table
    ]
    shown = {b.get_attribute("data-class"): float(b.get_attribute("data-share")) for b in bars}
    status, body = _service_json(service, image)
    assert status == 200
    for name, share in body["class_shares"].items():
        assert shown[name] == pytest.approx(share, abs=1e-5)
    assert sum(shown.values()) == pytest.approx(1.0, abs=1e-3)

    # Opacity slider: 100% shows the colour mask alone, 0% the original alone, live.
    slider = driver.find_element(By.ID, "opacity")
    at_half = driver.execute_script(PIXEL_DIFF_JS, card, "mask")
    slider.send_keys(Keys.END)
    assert driver.find_element(By.ID, "opacity-value").text == "100%"
    assert overlay.get_attribute("data-opacity") == "100"
    assert driver.execute_script(PIXEL_DIFF_JS, card, "mask") < 1.0 < at_half
    slider.send_keys(Keys.HOME)
    assert "0% opacity" in overlay.get_attribute("aria-label")
    assert driver.execute_script(PIXEL_DIFF_JS, card, "original") < 1.0
    for _ in range(12):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert driver.find_element(By.ID, "opacity-value").text == "60%"

    # Drag and drop onto the drop zone works like the file picker.
    driver.execute_script(DROP_PNG_JS, "dropped.png")
    dropped = wait.until(
        lambda d: d.find_element(By.XPATH, "//article[@data-state='done'][h3='dropped.png']")
    )
    assert dropped.find_elements(By.CSS_SELECTOR, ".share-chart g.bar")

    # A non-image is rejected with the service's own error text.
    note = tmp_path / "notes.txt"
    note.write_text("this is not a picture")
    status, error = _service_json(service, note)
    assert 400 <= status < 500
    detail = error["detail"].removeprefix("notes.txt: ")
    upload.send_keys(str(note))
    rejected = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#errors li"))
    assert rejected.text.startswith("notes.txt")
    assert detail in rejected.text

    # A ZIP of two images goes through the ZIP endpoint and shows one card per image.
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(_png(tmp_path / "a.png", seed=2), "a.png")
        zf.write(_png(tmp_path / "b.png", seed=3, size=(48, 80)), "b.png")
    upload.send_keys(str(archive))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state=done]")) == 4)
    group = driver.find_element(By.CSS_SELECTOR, ".upload-group")
    assert "batch.zip: 2 images" in group.text

    # A short video: upload progress, then an indeterminate "processing" state, then its frames.
    video = _mp4(tmp_path / "clip.mp4", frames=10)
    driver.execute_script(RECORD_PROGRESS_JS)
    upload.send_keys(str(video))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state=done]")) == 14)
    assert "clip.mp4: 10 frames" in driver.find_elements(By.CSS_SELECTOR, ".upload-group")[1].text
    steps = driver.execute_script("return window.progressSteps")
    assert "Processing clip.mp4 on the server…|indeterminate" in steps, steps
    assert not driver.find_element(By.ID, "progress").is_displayed()
    wait.until(lambda d: d.find_element(By.ID, "download-all").is_enabled())

    # Download all: one ZIP with original, mask, colour mask and overlay of each result.
    driver.find_element(By.ID, "download-all").click()
    target = browser.downloads / "roadseg-results.zip"
    wait.until(lambda _: target.exists() and zipfile.is_zipfile(target))
    with zipfile.ZipFile(target) as zf:
        names = set(zf.namelist())
        assert zf.testzip() is None  # CRCs written by the page are right
        assert {
            "street/original.png",
            "street/mask.png",
            "street/color.png",
            "street/overlay.png",
        } <= names
        assert {"a/mask.png", "b/overlay.png", "summary.json", "service/batch-results.zip"} <= names
        assert {"frame_00000/mask.png", "service/clip-results.zip"} <= names
        mask = np.asarray(Image.open(io.BytesIO(zf.read("street/mask.png"))))
        assert mask.shape == (64, 96) and mask.max() < params.data.num_classes

    ARTIFACTS.mkdir(exist_ok=True)
    name = "ui-api-key.png" if service.api_key else "ui.png"
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(ARTIFACTS / name))


def test_ui_live_mode_streams_fake_camera(browser, live_service: LiveService) -> None:
    """Live mode with Chromium's fake camera: frames round-trip over /stream, the overlay canvas
    changes between answers and the counters move (with the key: via the subprotocol)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, service = browser, live_service
    wait = WebDriverWait(driver, 120)
    driver.get(f"{service.url}/ui")
    if service.api_key:
        store = "localStorage.setItem('roadseg.apiKey', arguments[0])"
        driver.execute_script(store, service.api_key)
    driver.find_element(By.ID, "live-camera").click()

    def answered(d) -> int:
        return int(d.find_element(By.ID, "live-canvas").get_attribute("data-frames") or 0)

    wait.until(lambda d: answered(d) >= 2)
    digest = "const c = document.getElementById('live-canvas'); return c.toDataURL();"
    first = driver.execute_script(digest)
    seen = answered(driver)
    wait.until(lambda d: answered(d) >= seen + 3)
    # the fake camera animates: a later answer draws different pixels
    assert driver.execute_script(digest) != first
    assert float(driver.find_element(By.ID, "live-fps").text) > 0
    assert driver.find_element(By.ID, "live-latency").text.endswith("ms")
    assert int(driver.find_element(By.ID, "live-frames").text) >= seen + 3
    canvas = driver.find_element(By.ID, "live-canvas")
    assert int(canvas.get_attribute("width")) > 0 and int(canvas.get_attribute("height")) > 0
    ARTIFACTS.mkdir(exist_ok=True)
    driver.execute_script("arguments[0].scrollIntoView()", canvas)
    name = "ui-live-api-key.png" if service.api_key else "ui-live.png"
    assert driver.save_screenshot(str(ARTIFACTS / name))
    driver.find_element(By.ID, "live-stop").click()
    assert "Stopped" in driver.find_element(By.ID, "live-status").text
