"""Pure parts of training: LR schedule, joint augmentation, dataset sources, dataset version."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from roadseg.config import AugmentParams
from roadseg.data.dataset import augment_pair, build_dataset, image_stats, list_split, source_kind
from roadseg.tracking import content_hash, dataset_version, resolve_tracking_uri
from roadseg.train.setup import lr_factor


def test_lr_warms_up_then_decays_to_zero() -> None:
    total, warm = 100, 10
    for schedule in ("poly", "cosine"):
        f = [lr_factor(s, total, warm, schedule) for s in range(total + 1)]
        assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
        assert all(a >= b for a, b in itertools.pairwise(f[10:]))
        assert f[total] == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)


def test_class_weight_power_sets_how_much_rare_classes_weigh(synth_dir: Path) -> None:
    """frequency^-power, mean 1 over the classes present, 0 for absent ones: 0.5 (the default,
    class_stats.json's 1/sqrt) or 1 (inverse frequency); training reads `loss.class_weight_power`."""
    import torch

    from roadseg.config import load_params
    from roadseg.data.remap import frequency_weights
    from roadseg.train.setup import Runtime, build_data

    freq = [0.64, 0.32, 0.04, 0.0]
    for power, ratio in ((0.0, 1.0), (0.5, 4.0), (1.0, 16.0)):
        w = frequency_weights(freq, power)
        assert w[2] / w[0] == pytest.approx(ratio, rel=1e-5) and w[3] == 0.0
        assert sum(w[:3]) / 3 == pytest.approx(1.0, abs=1e-5)

    def weights(power: float) -> torch.Tensor:
        params = load_params(overrides=["loss.name=wce", f"loss.class_weight_power={power}"])
        return build_data(params, synth_dir, Runtime(torch.device("cpu"))).class_weights

    sqrt, inverse = weights(0.5), weights(1.0)
    seen = sqrt > 0
    assert seen.sum() >= 3 and torch.equal(seen, inverse > 0)
    expected = sqrt[seen] ** 2 / (sqrt[seen] ** 2).mean()  # (f^-0.5)^2 = f^-1
    assert torch.allclose(inverse[seen], expected, rtol=1e-3)


def test_augment_pads_with_ignore_and_keeps_pairs_aligned() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 200  # left half bright = class 1, right half dark = class 2
    mask = np.full((40, 60), 2, np.uint8)
    mask[:, :30] = 1
    aug = AugmentParams(scale_range=(0.5, 0.5), hflip_prob=0.5)
    for _ in range(10):
        im, m = augment_pair(image, mask, (40, 60), aug, rng, 255)
        assert im.shape == (40, 60, 3) and m.shape == (40, 60)
        assert (m == 255).mean() == pytest.approx(0.75, abs=0.05)  # half scale: 3/4 padding
        assert (im[m == 1] > 150).all() and (im[m == 2] < 50).all()
    big = AugmentParams(scale_range=(1.5, 1.5), hflip_prob=0.0)
    im, m = augment_pair(image, mask, (40, 60), big, np.random.default_rng(1), 255)
    assert (m != 255).all() and set(np.unique(m)) <= {1, 2}


def test_class_uniform_crops_find_a_class_a_few_pixels_wide() -> None:
    """augment.class_uniform_prob 1: every crop of a frame at twice the crop size holds a pixel of
    a class drawn from those present, so a 3x3 "sign" in a corner is in about half of them (two
    classes); plain crops (0) find it about once in sixteen, drawing as before."""
    from roadseg.data.dataset import crop_origin

    image = np.zeros((80, 120, 3), np.uint8)
    mask = np.zeros((80, 120), np.uint8)
    mask[2:5, 110:113] = 6
    mask[0, :] = 255  # ignore pixels are never a class to crop around

    def share(prob: float) -> float:
        aug = AugmentParams(scale_range=(2.0, 2.0), hflip_prob=0.0, class_uniform_prob=prob)
        rng = np.random.default_rng(0)
        hits = [(augment_pair(image, mask, (40, 60), aug, rng, 255)[1] == 6).any()
                for _ in range(400)]  # fmt: skip
        return float(np.mean(hits))

    assert 0.4 < share(1.0) < 0.6 and share(0.0) < 0.15
    rng, again = np.random.default_rng(3), np.random.default_rng(3)
    plain = (rng.integers(0, 41), rng.integers(0, 61))
    assert crop_origin(mask, (40, 60), 0.0, again, 255) == plain
    assert crop_origin(mask[:40, :60], (40, 60), 1.0, again, 255) == (0, 0)  # nothing to choose


def test_augment_is_deterministic_for_a_seed() -> None:
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    mask = np.random.default_rng(1).integers(0, 5, (30, 50), dtype=np.uint8)
    a = augment_pair(image, mask, (24, 40), AugmentParams(), np.random.default_rng(7), 255)
    b = augment_pair(image, mask, (24, 40), AugmentParams(), np.random.default_rng(7), 255)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


def test_raw_and_remapped_dirs_give_the_same_targets(synth_dir: Path, params, tmp_path) -> None:
    from roadseg.data.remap import remap_dataset

    remapped = tmp_path / "remapped"
    remap_dataset(synth_dir, remapped, params.data)
    assert source_kind(synth_dir, params) == "raw"
    assert source_kind(remapped, params) == "remapped"
    mean, std = image_stats(list_split(synth_dir, params, "train"))
    kw = {"train": False, "mean": mean, "std": std}
    raw = build_dataset(synth_dir, params, "val", **kw)
    rem = build_dataset(remapped, params, "val", **kw)
    assert len(raw) == len(rem) > 0
    for i in range(len(raw)):
        (xr, yr), (xm, ym) = raw[i], rem[i]
        assert (yr == ym).all() and (xr == xm).all()
        assert int(yr[yr != 255].max()) < params.data.num_classes
        assert xr.shape == (3, *params.train.image_size)


def test_missing_split_is_a_clear_error(synth_dir: Path, params, tmp_path) -> None:
    with pytest.raises(ValueError, match="no image/label pairs"):
        list_split(synth_dir, params, "test")
    with pytest.raises(ValueError, match="not found"):
        list_split(tmp_path / "nope", params, "train")


def test_dataset_version_prefers_dvc_md5(tmp_path: Path) -> None:
    data = tmp_path / "data" / "bdd100k"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("a")
    plain = dataset_version(data)
    assert plain == f"sha256:{content_hash(data)}"
    (data / "a.txt").write_text("b")
    assert dataset_version(data) != plain
    (tmp_path / "data.dvc").write_text(
        json.dumps({"outs": [{"md5": "abc123.dir", "path": "data/bdd100k"}]})
    )
    assert dataset_version(data) == "dvc:abc123.dir"
    shutil.rmtree(data)


def test_tracking_uri_default() -> None:
    assert resolve_tracking_uri(None) == f"sqlite:///{Path('mlruns.db').resolve()}"
    assert resolve_tracking_uri(" ", None) == resolve_tracking_uri()
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_forget_active_run_relies_on_mlflow_internals_that_still_exist(tmp_path: Path) -> None:
    """`roadseg.tracking.forget_active_run` is the only code touching MLflow private internals
    (the fluent active-run stack and system-metrics monitors). If an MLflow upgrade renames or
    reshapes them, this fails here, loudly, instead of the fallback silently keeping a dead run."""
    import mlflow
    from mlflow.tracking import fluent

    from roadseg.tracking import forget_active_run

    assert isinstance(fluent.run_id_to_system_metrics_monitor, dict)
    assert isinstance(fluent._active_run_stack.get(), list)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    # an experiment of this store: the fluent API remembers the last one set in this process
    mlflow.set_experiment("forget-active-run")
    try:
        run = mlflow.start_run(log_system_metrics=True)
        run_id = run.info.run_id
        assert run_id in fluent.run_id_to_system_metrics_monitor
        forget_active_run(run_id)
        assert mlflow.active_run() is None
        assert run_id not in fluent.run_id_to_system_metrics_monitor
        # and a new run can start: nothing of the forgotten one is left in the fluent state
        with mlflow.start_run() as second:
            assert second.info.run_id != run_id
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


def test_tracked_run_makes_each_call_once_then_falls_back(tmp_path: Path) -> None:
    """No retry loop stacked on MLflow's own HTTP retries: a failing call runs once, then once
    more on the local fallback store."""
    import mlflow

    from roadseg.tracking import TrackedRun

    messages: list[str] = []
    run = TrackedRun(f"sqlite:///{tmp_path / 'a.db'}", "exp", fallback_dir=tmp_path / "fb",
                     system_metrics=False, echo=messages.append)  # fmt: skip
    calls = []

    def flaky() -> str:
        calls.append(mlflow.get_tracking_uri())
        if len(calls) == 1:
            raise ConnectionError("server gone")
        return "ok"

    try:
        run.start()
        assert run.call(flaky) == "ok"
        assert len(calls) == 2 and run.fell_back and "fb" in calls[1]
        assert any("unreachable" in m for m in messages)
    finally:
        run.end()
        mlflow.set_tracking_uri(None)


def test_a_locked_sqlite_store_is_waited_for_not_fallen_back_from(
    tmp_path: Path, monkeypatch
) -> None:
    """Two variants logging to one SQLite file: "database is locked" is tried again in place (the
    run stays in the shared store, where the registry step looks); other errors are not."""
    import sqlite3

    import mlflow

    from roadseg import tracking
    from roadseg.tracking import TrackedRun, retry_locked

    waits: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", waits.append)
    run = TrackedRun(f"sqlite:///{tmp_path / 'a.db'}", "exp", fallback_dir=tmp_path / "fb",
                     system_metrics=False, echo=pytest.fail)  # fmt: skip
    calls = []

    def locked_twice() -> str:
        calls.append(mlflow.get_tracking_uri())
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    try:
        run.start()
        assert run.call(locked_twice) == "ok"
        assert not run.fell_back and all("a.db" in uri for uri in calls) and waits == [0.5, 1.0]
    finally:
        run.end()
        mlflow.set_tracking_uri(None)
    with pytest.raises(ValueError):
        retry_locked(lambda: (_ for _ in ()).throw(ValueError("not a lock")))
    assert waits == [0.5, 1.0]
    with pytest.raises(sqlite3.OperationalError):
        retry_locked(
            lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")), tries=3
        )
    # Two variants inserting the same dataset at once: the loser is tried again, not moved to a
    # fallback store (where the registry step would not see its run).
    raced = []

    def insert_dataset() -> str:
        raced.append(1)
        if len(raced) == 1:
            raise sqlite3.IntegrityError("UNIQUE constraint failed: datasets.experiment_id, "
                                         "datasets.name, datasets.digest")  # fmt: skip
        return "linked"

    assert retry_locked(insert_dataset) == "linked" and len(raced) == 2
    with pytest.raises(sqlite3.IntegrityError):  # another table's unique key is a real error
        retry_locked(
            lambda: (_ for _ in ()).throw(
                sqlite3.IntegrityError("UNIQUE constraint failed: runs.x")
            )
        )
