"""Plain step functions behind the components: params hash check, candidate collection, dataset fetch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roadseg.pipeline.steps import collect_candidates, fetch_dataset, step_params


def test_step_params_checks_the_run_hash_and_adds_task_overrides() -> None:
    base = step_params(None, ["train.epochs=2"])
    task = step_params(
        None, ["train.epochs=2"], params_hash=base.digest(), extra=["loss.name=ohem"]
    )
    assert task.loss.name == "ohem" and task.train.epochs == 2
    with pytest.raises(ValueError, match="differs from the run's"):
        step_params(None, ["train.epochs=3"], params_hash=base.digest())


def test_collect_candidates_prefers_full_resolution_scores(tmp_path: Path) -> None:
    for loss, miou in (("wce", 0.3), ("dice", 0.4)):
        (tmp_path / "train" / loss).mkdir(parents=True)
        result = {"run_id": f"r-{loss}", "model_uri": f"models:/m-{loss}",
                  "best_val": {"miou": miou, "per_class": []}}  # fmt: skip
        (tmp_path / "train" / loss / "train.json").write_text(json.dumps(result))
    (tmp_path / "eval").mkdir()
    scores = {"miou": 0.45, "per_class": [], "confusion_matrix": [[1]]}
    (tmp_path / "eval/dice.json").write_text(json.dumps(scores))
    got = {c["loss"]: c for c in collect_candidates(tmp_path / "train", tmp_path / "eval")}
    assert got["dice"]["metrics"] == {"miou": 0.45, "per_class": []}  # evaluate's, no matrix
    assert got["wce"]["metrics"]["miou"] == 0.3 and got["wce"]["run_id"] == "r-wce"
    with pytest.raises(FileNotFoundError, match=r"train\.json"):
        collect_candidates(tmp_path / "eval")


def test_fetch_dataset_links_a_local_copy_and_digests_it(tmp_path: Path, params) -> None:
    src = tmp_path / "src"
    (src / "images/10k/train").mkdir(parents=True)
    (src / "images/10k/train/a.jpg").write_bytes(b"x")
    got = fetch_dataset(tmp_path / "out", params, data_dir=str(src))
    assert (tmp_path / "out/images/10k/train/a.jpg").read_bytes() == b"x"
    assert got["digest"].startswith("sha256:") and got["source"] == str(src.resolve())
    with pytest.raises(ValueError, match="no dataset"):
        fetch_dataset(tmp_path / "none", params)
    with pytest.raises(ValueError, match="data_repo"):
        fetch_dataset(tmp_path / "none", params, data_rev="v1")


def test_train_step_prefixes_its_lines_with_the_variant(monkeypatch, capsys) -> None:
    """Two variants of a local run train at once; each line says which one it belongs to, and
    the local run's log filter (`_TaskLog`) still passes the epoch lines on."""
    import roadseg.train.loop
    from roadseg.config import load_params
    from roadseg.pipeline.run import _TaskLog
    from roadseg.pipeline.steps import train_step

    def fake_train_model(params, data_dir, *, echo, **kw):
        echo("epoch 1/2: train loss 1.0000  val mIoU 0.1000  best 0.1000 (epoch 1)")
        raise RuntimeError("stop")

    monkeypatch.setattr(roadseg.train.loop, "train_model", fake_train_model)
    with pytest.raises(RuntimeError, match="stop"):
        train_step("data", load_params(None, ["loss.name=ohem"]), tracking_uri="sqlite://")
    line = capsys.readouterr().out.strip()
    assert line.startswith("[ohem] epoch 1/2:")
    assert _TaskLog.KEEP.search(line)
