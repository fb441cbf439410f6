"""Drift monitoring: features, reports on in-distribution vs shifted traffic, gauges, the log."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roadseg.data.bdd100k import list_pairs, read_image
from roadseg.inference.predict import Prediction
from roadseg.monitor.drift import (
    IMAGE_FEATURES,
    build_reference_profile,
    image_features,
    load_profile,
    prometheus_text,
    run_drift_report,
    save_profile,
    share_column,
)
from roadseg.monitor.log import MonitorLog


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    """Synthetic road scenes: a training split and held-out traffic from the same generator."""
    from roadseg.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("drift-synth")
    synthesize_dataset(out, train=60, val=40, test=0, height=72, width=120, seed=3)
    return {s: [read_image(p.image) for p in list_pairs(out, s)] for s in ("train", "val")}


def night(img: np.ndarray) -> np.ndarray:
    dark = img.astype(np.float32) * np.array([0.25, 0.28, 0.4])
    return dark.clip(0, 255).astype(np.uint8)


def fog(img: np.ndarray) -> np.ndarray:
    return (0.35 * img.astype(np.float32) + 0.65 * 200).clip(0, 255).astype(np.uint8)


def test_features_values_on_known_images() -> None:
    black = image_features(np.zeros((16, 16, 3), np.uint8))
    assert black["brightness"] == 0 and black["saturation"] == 0 and black["sharpness"] == 0
    red = image_features(np.tile(np.array([255, 0, 0], np.uint8), (16, 16, 1)))
    assert (
        red["mean_r"] == pytest.approx(1.0)
        and red["mean_g"] == 0
        and red["saturation"] == pytest.approx(1.0)
    )
    checker = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    sharp = image_features(np.repeat(checker[:, :, None], 3, 2))
    assert sharp["sharpness"] > 1000 and sharp["contrast"] == pytest.approx(0.5, abs=0.01)
    assert set(IMAGE_FEATURES) <= set(black)


def test_features_are_exact_float64_statistics_of_the_strided_grid() -> None:
    """The integer path equals the textbook float64 formulas on every 3rd pixel of a 1280x720
    frame (`FEATURE_MAX_SIDE` 512: the scale stored reference profiles were built at), and the
    service's split (grid on the request path, features off it) gives the same numbers."""
    from roadseg.monitor.features import FEATURE_MAX_SIDE, feature_grid, grid_features

    img = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert FEATURE_MAX_SIDE == 512 and feature_grid(img).shape == (240, 427, 3)
    rgb = img[::3, ::3].astype(np.float64) / 255
    luma = rgb @ [0.299, 0.587, 0.114]
    cmax = rgb.max(2)
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    want = {
        "brightness": luma.mean(),
        "contrast": luma.std(),
        "saturation": np.divide(
            cmax - rgb.min(2), cmax, out=np.zeros_like(cmax), where=cmax > 0
        ).mean(),
        "sharpness": lap.var() * 1e3,
        "mean_r": rgb[..., 0].mean(),
        "mean_g": rgb[..., 1].mean(),
        "mean_b": rgb[..., 2].mean(),
    }
    got = image_features(img)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k
    pred = Prediction(np.zeros((720, 1280), np.uint8), 0.5, {"road": 1.0})
    assert grid_features(feature_grid(img), pred) == image_features(img, pred)


def test_features_include_prediction_shares_and_confidence() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    pred = Prediction(np.zeros((8, 8), np.uint8), 0.8, {"road": 0.75, "traffic light": 0.25})
    f = image_features(img, pred)
    assert (
        f["share_road"] == 0.75
        and f[share_column("traffic light")] == 0.25
        and f["confidence"] == 0.8
    )
    probs = np.zeros((2, 8, 8))
    probs[0, :4], probs[1, 4:] = 0.9, 0.6
    probs[1, :4], probs[0, 4:] = 0.1, 0.4
    f = image_features(img, probs, class_names=["road", "sky"])
    assert f["share_road"] == 0.5 and f["confidence"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="HxWx3"):
        image_features(np.zeros((8, 8), np.uint8))


def test_in_distribution_traffic_shows_no_drift(scenes, tmp_path: Path) -> None:
    ref = build_reference_profile(scenes["train"])
    cur = build_reference_profile(scenes["val"])
    result = run_drift_report(ref, cur, threshold=0.5, stattest_threshold=0.05, out_dir=tmp_path)
    assert not result.drifted, result.to_dict()
    assert result.drift_share < 0.5
    assert set(IMAGE_FEATURES) <= set(result.features)
    assert (tmp_path / "drift_report.html").stat().st_size > 1000
    assert json.loads((tmp_path / "drift_summary.json").read_text())["drifted"] is False
    assert "metrics" in json.loads((tmp_path / "drift_report.json").read_text())


@pytest.mark.parametrize("shift", [night, fog], ids=["night", "fog"])
def test_shifted_traffic_is_detected(scenes, shift) -> None:
    ref = build_reference_profile(scenes["train"])
    cur = build_reference_profile([shift(im) for im in scenes["val"]])
    result = run_drift_report(ref, cur, threshold=0.5, stattest_threshold=0.05)
    assert result.drifted and result.drift_share >= 0.5
    assert result.features["brightness"].drifted or result.features["contrast"].drifted


def test_prometheus_text_parses(scenes) -> None:
    ref = build_reference_profile(scenes["train"][:30])
    cur = build_reference_profile([night(im) for im in scenes["val"][:20]])
    result = run_drift_report(ref, cur, threshold=0.5, stattest_threshold=0.05)
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(result, "7"))}
    share = families["roadseg_drift_share"].samples[0]
    assert share.value == pytest.approx(result.drift_share) and share.labels["model_version"] == "7"
    scores = {s.labels["feature"]: s.value for s in families["roadseg_drift_feature_score"].samples}
    assert scores.keys() == result.features.keys()
    assert families["roadseg_drift_detected"].samples[0].value == 1.0
    assert families["roadseg_drift_report_timestamp_seconds"].samples[0].value > 0


def test_profile_roundtrip_and_monitor_log(tmp_path: Path) -> None:
    df = build_reference_profile(
        [np.full((8, 8, 3), v, np.uint8) for v in (10, 200)], image_ids=["a", "b"]
    )
    for suffix in (".csv", ".parquet"):
        back = load_profile(save_profile(df, tmp_path / f"ref{suffix}"))
        assert list(back["image_id"]) == ["a", "b"]
    log = MonitorLog(tmp_path / "mon")

    def writer(k: int) -> None:
        for i in range(50):
            log.write([{"brightness": float(i), "worker": k, "pad": "x" * 500}], model_version="3")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (path,) = (tmp_path / "mon").glob("features-*.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["model_version"] == "3" for line in lines)
    with path.open("a") as f:
        f.write('{"torn": ')  # a crash mid-line must not break the reader
    assert len(load_profile(tmp_path / "mon")) == 200
    assert "raw" not in lines[0] and "image" not in json.loads(lines[0])


def test_monitoring_features_need_neither_pandas_nor_evidently() -> None:
    """The service computes `image_features` per request: `roadseg.monitor.features` (next to the
    monitoring log) imports numpy only; the drift statistics stay in `roadseg.monitor.drift`."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from roadseg.monitor.features import image_features\n"
        "from roadseg.monitor.log import MonitorLog\n"
        "image_features(np.zeros((8, 8, 3), np.uint8))\n"
        "print(sorted(m for m in ('pandas', 'evidently') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert image_features is __import__("roadseg.monitor.features").monitor.features.image_features
