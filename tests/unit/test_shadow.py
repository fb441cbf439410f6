"""The shadow challenger (roadseg/serve/shadow.py): agreement and class shares on known masks, the
share never exceeded, a slow challenger that drops and counts instead of slowing the champion, a
challenger that fails to load leaving the champion serving the same masks (in-process service)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from roadseg.config import load_params
from roadseg.inference.predict import Prediction, predict
from roadseg.serve.shadow import (
    Sampler,
    ShadowRunner,
    ShadowStats,
    class_share_vector,
    pixel_agreement,
    shadow_settings,
    start_shadow,
)
from tests.inprocess import in_process_service
from tests.unit.test_service_app import image_bytes, png_array

NAMES = ["road", "car", "sky"]
# Columns 0..7 of classes 0 0 0 1 1 2 2 2: its mirror agrees on the two middle columns only.
ROW = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.uint8)
MASK = np.tile(ROW, (4, 1))


def test_agreement_of_known_masks() -> None:
    assert pixel_agreement(MASK, MASK) == 1.0
    assert pixel_agreement(MASK, np.fliplr(MASK)) == 0.25  # 8 of 32 pixels
    shifted = np.tile(np.array([0, 0, 1, 1, 2, 2, 2, 2], np.uint8), (4, 1))
    assert pixel_agreement(MASK, shifted) == 6 / 8
    assert pixel_agreement(MASK, np.full_like(MASK, 9)) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        pixel_agreement(MASK, MASK.T)
    with pytest.raises(ValueError, match="empty"):
        pixel_agreement(MASK[:0], MASK[:0])


def test_class_share_vectors() -> None:
    np.testing.assert_allclose(class_share_vector(MASK, 3), [3 / 8, 2 / 8, 3 / 8])
    np.testing.assert_allclose(class_share_vector(MASK, 5), [3 / 8, 2 / 8, 3 / 8, 0, 0])
    # ids beyond the classes (an ignore id) are not counted as any class
    with_ignore = MASK.copy()
    with_ignore[:, 0] = 255
    np.testing.assert_allclose(class_share_vector(with_ignore, 3), [2 / 8, 2 / 8, 3 / 8])


def test_stats_running_mean_and_shares() -> None:
    stats = ShadowStats(NAMES)
    assert stats.add(MASK, MASK) == 1.0
    assert stats.add(MASK, np.fliplr(MASK)) == 0.25
    s = stats.summary()
    assert s["images"] == 2 and s["agreement"] == 0.625 and s["min_agreement"] == 0.25
    assert s["class_shares"]["champion"] == {"road": 0.375, "car": 0.25, "sky": 0.375}
    flipped_sky = np.fliplr(MASK)  # the same shares: mirroring moves pixels, not their counts
    assert class_share_vector(flipped_sky, 3).tolist() == class_share_vector(MASK, 3).tolist()
    assert ShadowStats(NAMES).summary()["agreement"] is None


@pytest.mark.parametrize("share", [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.999, 1.0])
def test_share_is_never_exceeded(share: float) -> None:
    sampler = Sampler(share)
    for n in range(1, 2001):
        sampler.take()
        assert sampler.taken <= share * n + 1e-9, (n, sampler.taken)
    assert sampler.taken == int(share * 2000 + 1e-9)  # and evenly spread: no fewer either


def test_share_under_concurrent_offers() -> None:
    sampler = Sampler(0.3)

    def offer() -> None:
        for _ in range(500):
            sampler.take()

    threads = [threading.Thread(target=offer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sampler.offered == 4000 and sampler.taken == 1200
    with pytest.raises(ValueError):
        Sampler(1.5)


class FakeChallenger:
    """Answers the mirror of each image's champion mask (known agreement), optionally slowly."""

    def __init__(self, delay: float = 0.0, names=NAMES) -> None:
        self.delay, self.calls = delay, 0
        self.spec = SimpleNamespace(class_names=list(names))

    def predict_now(self, images):
        self.calls += 1
        time.sleep(self.delay)
        return [Prediction(np.fliplr(im[..., 0]), 1.0, {}) for im in images]


class RecordingMetrics:
    def __init__(self) -> None:
        self.values: dict[str, float] = {"images": 0, "dropped": 0, "errors": 0}

    def set(self, name: str, value: float) -> None:
        self.values[name] = value

    def inc(self, name: str, amount: float = 1) -> None:
        self.values[name] += amount


def runner(challenger, *, share=1.0, queue_size=4, reports=None, champion=None, meta=None):
    meta = meta or {"model_name": "roadseg-unet", "version": "2", "run_id": "r2"}

    def load():
        if isinstance(challenger, Exception):
            raise challenger
        return challenger, meta

    r = ShadowRunner(
        load,
        share=share, uri="models:/roadseg-unet@challenger",
        champion=champion or {"model_name": "roadseg-unet", "version": "1"},
        class_names=NAMES, queue_size=queue_size, log_every_s=3600,
        reporter=(lambda m, s: reports.append((m, s))) if reports is not None else None,
        metrics=RecordingMetrics(),
    )  # fmt: skip
    return r.start()


def champion_pair(n: int) -> tuple[list[np.ndarray], list[Prediction]]:
    """Images whose channel 0 is the champion's mask (the fake challenger mirrors it)."""
    images = [np.repeat(MASK[..., None], 3, -1) for _ in range(n)]
    return images, [Prediction(MASK, 1.0, {}) for _ in range(n)]


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_runner_records_agreement_shares_and_reports_on_close() -> None:
    reports: list = []
    r = runner(FakeChallenger(), share=0.5, queue_size=8, reports=reports)
    assert r.wait_loaded(10) == "on"
    images, preds = champion_pair(10)
    r.offer(images, preds)
    wait_for(lambda: r.stats.images == 5)
    st = r.status()
    assert st["state"] == "on" and st["images_offered"] == 10 and st["images_sampled"] == 5
    assert st["agreement"] == 0.25 and st["challenger_version"] == "2" and st["dropped"] == 0
    assert r.metrics.values["images"] == 5 and r.metrics.values["agreement"] == 0.25
    assert r.metrics.values["active"] == 1
    r.close()
    assert r.metrics.values["active"] == 0
    (meta, summary), = reports  # fmt: skip
    assert meta["version"] == "2" and summary["images"] == 5 and summary["agreement"] == 0.25
    assert summary["champion"] == "1" and summary["offered"] == 10 and summary["share"] == 0.5
    assert summary["class_shares"]["challenger"] == {"road": 0.375, "car": 0.25, "sky": 0.375}


def test_slow_challenger_drops_and_counts_instead_of_slowing_the_champion() -> None:
    slow = FakeChallenger(delay=0.3)
    r = runner(slow, share=1.0, queue_size=2)
    assert r.wait_loaded(10) == "on"
    images, preds = champion_pair(1)
    worst = 0.0
    for _ in range(40):  # 40 requests in a burst; the challenger manages ~1 batch per 0.3 s
        t0 = time.perf_counter()
        r.offer(images, preds)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.15, f"offer blocked for {worst:.3f}s"  # a challenger call takes 0.3 s
    assert r.stats.dropped >= 30 and r.metrics.values["dropped"] == r.stats.dropped
    r.close(timeout=10)
    # every sampled image is either compared or dropped, none lost, none waited on
    assert r.stats.images + r.stats.dropped == r.sampler.taken == 40
    assert r.stats.images >= 2 and r.stats.agreement == 0.25


@pytest.mark.parametrize(
    ("challenger", "meta", "state", "phrase"),
    [
        (OSError("registry unreachable"), None, "failed", "cannot load"),
        (FakeChallenger(names=["road", "sidewalk"]), None, "failed", "other classes"),
        (FakeChallenger(), {"model_name": "roadseg-unet", "version": "1"}, "off", "is the served champion"),
    ],
)  # fmt: skip
def test_refused_challenger_leaves_shadow_off(challenger, meta, state, phrase, caplog) -> None:
    reports: list = []
    r = runner(challenger, meta=meta, reports=reports)
    assert r.wait_loaded(10) == state
    assert phrase in r.reason and phrase in caplog.text
    images, preds = champion_pair(3)
    r.offer(images, preds)  # a no-op: nothing sampled, nothing queued
    assert r.sampler.offered == 0 and r.status()["state"] == state
    r.close()
    assert reports == [] and r.metrics.values["active"] == 0


def test_failing_challenger_inference_is_counted() -> None:
    class Broken(FakeChallenger):
        def predict_now(self, images):
            raise RuntimeError("CUDA out of memory")

    r = runner(Broken())
    assert r.wait_loaded(10) == "on"
    r.offer(*champion_pair(2))
    wait_for(lambda: r.stats.errors == 2)
    assert r.stats.images == 0 and r.metrics.values["errors"] == 2
    r.close()


def test_settings_env_overrides_and_default_uri() -> None:
    p = load_params()
    assert p.serve.shadow.share == 0.0 and p.register_.shadow_min_images == 0
    assert shadow_settings(p, {}, {}) == (0.0, "models:/roadseg-unet@challenger")
    bento = {"model_name": "roadseg-unet", "lineage": {"mlflow_model": "roadseg-kitti-road"}}
    assert shadow_settings(p, bento, {})[1] == "models:/roadseg-kitti-road@challenger"
    served = {"model_name": "my-model", "model_uri": "models:/my-model@champion"}
    assert shadow_settings(p, served, {"ROADSEG_SHADOW_SHARE": "0.25"}) == (
        0.25, "models:/my-model@challenger")  # fmt: skip
    env = {"ROADSEG_SHADOW_SHARE": "1", "ROADSEG_SHADOW_MODEL_URI": "models:/x/3"}
    assert shadow_settings(p, served, env) == (1.0, "models:/x/3")
    set_p = load_params(overrides=["serve.shadow.share=0.1", "serve.shadow.model_uri=models:/y/1"])
    assert shadow_settings(set_p, {}, {}) == (0.1, "models:/y/1")
    for bad in ("lots", "1.5"):
        with pytest.raises(ValueError):
            shadow_settings(p, {}, {"ROADSEG_SHADOW_SHARE": bad})
    # share 0 (the default) starts nothing; a bad env value starts nothing, with a warning
    assert start_shadow(p, {}, NAMES, environ={}) is None
    assert start_shadow(p, {}, NAMES, environ={"ROADSEG_SHADOW_SHARE": "x"}) is None


# ---- the service, in process --------------------------------------------------------------


@pytest.fixture
def shadow_env(monkeypatch: pytest.MonkeyPatch):
    def set_env(share: str, uri: str) -> None:
        monkeypatch.setenv("ROADSEG_SHADOW_SHARE", share)
        monkeypatch.setenv("ROADSEG_SHADOW_MODEL_URI", uri)

    return set_env


def _segment_masks(client, n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for seed in range(n):
        data, pixels = image_bytes(45, 70, seed=seed)
        r = client.post("/segment", files={"image": ("a.png", data, "image/png")},
                        headers={"X-API-Key": "k"})  # fmt: skip
        assert r.status_code == 200, r.text
        out.append((pixels, png_array(r.content)))
    return out


def test_service_challenger_that_fails_to_load_leaves_the_champion_serving(
    tmp_path, shadow_env, caplog
) -> None:
    shadow_env("1.0", str(tmp_path / "no-such-challenger.pt"))
    with in_process_service(tmp_path, {}, "k") as (client, model, spec):
        wait_for(lambda: client.get("/metadata", headers={"X-API-Key": "k"}).json()["shadow"]
                 ["state"] != "loading")  # fmt: skip
        meta = client.get("/metadata", headers={"X-API-Key": "k"}).json()
        assert meta["shadow"]["state"] == "failed"
        assert "cannot load" in meta["shadow"]["reason"] and meta["shadow"]["images"] == 0
        for pixels, mask in _segment_masks(client):
            np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
    assert "shadow challenger off, the champion serves alone" in caplog.text


def test_service_shadows_a_second_checkpoint(tmp_path, shadow_env) -> None:
    from roadseg.testing import save_random_checkpoint

    other = tmp_path / "challenger.pt"
    challenger, _ = save_random_checkpoint(other, base_channels=4, seed=1, epoch=7)
    shadow_env("0.5", str(other))
    with in_process_service(tmp_path, {}, "k") as (client, model, spec):
        get = lambda: client.get("/metadata", headers={"X-API-Key": "k"}).json()["shadow"]  # noqa: E731
        wait_for(lambda: get()["state"] == "on", 60)
        answered = _segment_masks(client, 4)
        wait_for(lambda: get()["images"] == 2, 30)  # half of 4 images
        st = get()
        assert st["images_offered"] == 4 and st["images_sampled"] == 2 and st["dropped"] == 0
        assert st["challenger_version"] == "ckpt-epoch7"
        # images 2 and 4 are sampled (n where floor(n/2) grows); agreement = their mean
        expect = [pixel_agreement(mask, predict(challenger, [px], spec)[0].mask)
                  for px, mask in (answered[1], answered[3])]  # fmt: skip
        assert st["agreement"] == pytest.approx(float(np.mean(expect)), abs=1e-6)
        assert 0.0 < st["agreement"] < 1.0  # two different random models
        for pixels, mask in answered:  # the champion's answers are the champion's
            np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
        # the Prometheus series (in process: the default registry; served: /metrics)
        import prometheus_client

        text = prometheus_client.generate_latest().decode()
        assert "roadseg_shadow_images_total 2.0" in text and "roadseg_shadow_active 1.0" in text
        assert f"roadseg_shadow_agreement {st['agreement']}"[:32] in text
