"""Pipeline steps as plain functions: what each Kubeflow component in `components/` runs
(the release steps, package and deploy, are in `roadseg/release/rollout.py`).

A component reads its environment (tracking URI, params file), calls one of these with paths and
a `Params` object, and writes the result into its KFP artifacts. The same functions back
`roadseg pipeline run --local` (through `kfp.local`) and can be called directly in tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from roadseg.config import Params, load_params

# Reference profiles use an evenly spaced sample of the training split: the drift test compares
# distributions, and a few hundred images pin them down at a fraction of the prediction cost.
PROFILE_MAX_IMAGES = 256


class ValidationFailed(RuntimeError):
    """The dataset broke the label rules: the pipeline stops before any training."""


def step_params(
    params_file: str | None,
    overrides: Sequence[str],
    *,
    params_hash: str | None = None,
    extra: Sequence[str] = (),
) -> Params:
    """The run's params (file + overrides), checked against the hash the run started with.

    `extra` adds per-task overrides (loss variant, checkpoint dir) after the check, so the hash
    stays the one of the whole pipeline run.
    """
    base = load_params(params_file or None, list(overrides))
    if params_hash and base.digest() != params_hash:
        raise ValueError(
            f"params hash {base.digest()} differs from the run's {params_hash}: the image's "
            "params file changed between tasks"
        )
    return load_params(params_file or None, [*overrides, *extra]) if extra else base


def fetch_dataset(
    out: str | Path,
    params: Params,
    *,
    synthetic: bool = False,
    data_dir: str = "",
    data_rev: str = "",
    data_repo: str = "",
) -> dict[str, str]:
    """Materialise the raw dataset in `out`: synthetic, a local directory, or a DVC revision.

    Returns:
        `digest` (dataset version: dvc md5 or content hash) and `source` (what was fetched).
    """
    from roadseg.tracking import dataset_version

    out = Path(out)
    if synthetic and params.data.dataset == "kitti_road":
        from roadseg.data.kitti import synthesize_kitti

        s = params.synth
        synthesize_kitti(out, train=s.train, val=s.val, test=s.test, height=s.height,
                         width=s.width, seed=s.seed)  # fmt: skip
        source = (
            f"synthetic KITTI Road(seed={s.seed}, {s.train}/{s.val}/{s.test}, {s.height}x{s.width})"
        )
    elif synthetic:
        from roadseg.data.synth import synthesize_dataset

        s = params.synth
        synthesize_dataset(out, train=s.train, val=s.val, test=s.test, height=s.height,
                           width=s.width, seed=s.seed,
                           palette=[c.color for c in params.data.source_classes])  # fmt: skip
        source = f"synthetic(seed={s.seed}, {s.train}/{s.val}/{s.test}, {s.height}x{s.width})"
    elif data_dir:
        src = Path(data_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"dataset directory not found: {src}")
        _link_tree(src, out)
        source = str(src.resolve())
    elif data_rev:
        if not data_repo:
            raise ValueError("data_rev needs data_repo (the git URL of the DVC project)")
        # `dvc get` fetches one path at one revision from the remote, without a git checkout.
        subprocess.run(
            ["dvc", "get", data_repo, params.data.raw_dir, "--rev", data_rev, "-o", str(out)],
            check=True,
        )
        source = f"{data_repo}@{data_rev}:{params.data.raw_dir}"
    else:
        raise ValueError("no dataset: set synthetic=True, data_dir or data_rev")
    return {"digest": dataset_version(out), "source": source}


def validate_step(data_dir: str | Path, params: Params, report_dir: str | Path) -> Any:
    """Run the label validation suite; raise `ValidationFailed` naming the first violations."""
    from roadseg.data.validation import validate_dataset

    result = validate_dataset(
        data_dir,
        params.data,
        report_dir=report_dir,
        max_ignore_fraction=params.validate_.max_ignore_fraction,
    )
    if not result.success:
        shown = "; ".join(f"{f.file}: {f.rule} ({f.detail})" for f in result.failures[:5])
        more = len(result.failures) - 5
        raise ValidationFailed(
            f"{len(result.failures)} label violation(s): {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + f". Data Docs: {result.data_docs_path}"
        )
    return result


def remap_step(src: str | Path, out: str | Path, params: Params) -> dict[str, Any]:
    """19 -> 14 class remap with class statistics (KITTI Road: binary id masks, same layout)."""
    from roadseg.data.remap import remap_dataset

    return remap_dataset(src, out, params.data, link_images=params.remap.link_images,
                         workers=params.data.num_workers, progress=False)  # fmt: skip


def data_steps(params: Params, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The data half of the pipeline on the defaults, as `roadseg demo` runs it: synthesise into
    `synth.out_dir`, validate into `validate.report_dir`, remap into `data.remapped_dir`.

    Returns:
        `synth` (`synthesize_dataset`'s summary), `validation` (the `ValidationResult`) and
        `remap` (`remap_dataset`'s summary).

    Raises:
        ValidationFailed: the synthetic data broke a label rule (names the violations).
        DatasetError, ValueError, OSError: unusable input or output directories.
    """
    from roadseg.data.synth import synthesize_dataset

    s, src, out = params.synth, Path(params.synth.out_dir), Path(params.data.remapped_dir)
    echo(f"1/3 synth → {src}")
    made = synthesize_dataset(src, train=s.train, val=s.val, test=s.test, height=s.height,
                              width=s.width, seed=s.seed,
                              palette=[c.color for c in params.data.source_classes])  # fmt: skip
    echo(f"2/3 validate → {params.validate_.report_dir}")
    checked = validate_step(src, params, params.validate_.report_dir)
    echo(f"3/3 remap → {out}")
    from roadseg.data.remap import remap_dataset

    remapped = remap_dataset(src, out, params.data, link_images=params.remap.link_images,
                             workers=params.data.num_workers)  # fmt: skip
    return {"synth": made, "validation": checked, "remap": remapped}


def train_step(
    data_dir: str | Path,
    params: Params,
    *,
    tracking_uri: str,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train one loss variant (checkpoints in `params.train.checkpoint_dir`); its candidate dict."""
    from mlflow import MlflowClient

    from roadseg.train.loop import train_model

    variant = params.loss.name
    # Variants train in parallel in a local run and their lines interleave: say whose each is.
    result = train_model(params, Path(data_dir), tracking_uri=tracking_uri, run_name=variant,
                         progress=False, echo=lambda line: print(f"[{variant}] {line}", flush=True))  # fmt: skip
    if result.run_id is None or result.model_uri is None:
        raise RuntimeError(f"training {params.loss.name} logged no model (run {result.run_id})")
    if result.fell_back:
        raise RuntimeError(
            f"MLflow at {tracking_uri} was unreachable; the {params.loss.name} run went to the local "
            f"fallback store in {result.tracking_uri}, which the registry step cannot see"
        )
    client = MlflowClient(tracking_uri)
    for key, value in (tags or {}).items():
        client.set_tag(result.run_id, key, str(value))
    best_val = {k: v for k, v in result.best_val.items() if k != "confusion_matrix"}
    return {
        "loss": params.loss.name,
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "checkpoint": str(Path(result.checkpoint_dir) / "best.pt"),
        "train_val": best_val,
    }


def evaluate_step(
    candidate: Mapping[str, Any], data_dir: str | Path, params: Params, *, tracking_uri: str
) -> dict[str, Any]:
    """Full-resolution scores of a trained variant on `evaluate.split`, logged to its run.

    Returns the candidate with `metrics` = those scores (what the registry compares).
    """
    from roadseg.evaluate.segmentation import evaluate_model, log_scores
    from roadseg.models.io import load_model

    split = params.evaluate.split
    model, spec, _ = load_model(candidate["checkpoint"])
    scores = evaluate_model(model, spec, Path(data_dir), params, split, progress=False)
    log_scores(scores, candidate["run_id"], tracking_uri, prefix=f"eval_{split}",
               data_dir=Path(data_dir), dataset=params.data.dataset)  # fmt: skip
    metrics = {k: v for k, v in scores.items() if k != "confusion_matrix"}
    return {**candidate, "metrics": metrics}


def build_profile(
    model_uri: str,
    data_dir: str | Path,
    params: Params,
    *,
    tracking_uri: str,
    max_images: int = PROFILE_MAX_IMAGES,
) -> pd.DataFrame:
    """Drift reference profile: image statistics of the training split + predicted class shares."""
    import mlflow

    from roadseg.data.bdd100k import read_image
    from roadseg.data.dataset import list_split
    from roadseg.inference.predict import predict
    from roadseg.models.io import load_model
    from roadseg.monitor.drift import build_reference_profile

    mlflow.set_tracking_uri(tracking_uri)  # load_model resolves models:/ URIs with it
    model, spec, _ = load_model(model_uri)
    samples = list_split(Path(data_dir), params, "train")
    step = max(1, len(samples) // max_images)
    samples = samples[::step][:max_images]
    images = [read_image(s.image) for s in samples]
    preds = predict(model, images, spec, batch_size=params.evaluate.batch_size)
    return build_reference_profile(images, preds, class_names=list(spec.class_names),
                                   image_ids=[s.stem for s in samples])  # fmt: skip


def register_step(
    candidates: Sequence[Mapping[str, Any]],
    data_dir: str | Path,
    params: Params,
    *,
    tracking_uri: str,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """Register the best candidate (see `roadseg.release.registry.register_best`), then log the parent
    run that groups the variants (`roadseg.release.runs`); the result as a dict, with `parent_run_id`."""
    from roadseg.release.registry import register_best
    from roadseg.release.runs import log_parent_run
    from roadseg.tracking import experiment_name

    result = register_best(
        candidates,
        params.register_,
        tracking_uri=tracking_uri,
        tags=tags,
        profile_builder=lambda best: build_profile(
            best.model_uri, data_dir, params, tracking_uri=tracking_uri
        ),
        dataset=params.data.dataset,
    )
    out = result.to_dict()
    out["parent_run_id"] = log_parent_run(
        out,
        candidates,
        tracking_uri=tracking_uri,
        experiment=experiment_name(params.data.dataset, params.train.experiment),
        tags=tags,
    )
    return out


def register_trained(
    train_dir: str | Path,
    eval_dir: str | Path | None,
    data_dir: str | Path,
    params: Params,
    *,
    tracking_uri: str,
) -> dict[str, Any]:
    """`roadseg register` (the DVC route): the candidates of `collect_candidates`, registered
    by `register_step` with this checkout's lineage tags (`pipeline_run_id` = `local`)."""
    from roadseg.tracking import dataset_version, git_commit

    tags = {"dataset_version": dataset_version(Path(data_dir)), "params_hash": params.digest(),
            "git_commit": git_commit() or "unknown", "pipeline_run_id": "local"}  # fmt: skip
    candidates = collect_candidates(train_dir, eval_dir)
    return register_step(candidates, data_dir, params, tracking_uri=tracking_uri, tags=tags)


def collect_candidates(train_dir: str | Path, eval_dir: str | Path | None = None) -> list[dict]:
    """Candidates from `roadseg train --json` results (`TRAIN/<loss>/train.json`), scored by
    `roadseg evaluate --json` (`EVAL/<loss>.json`) where present, else by their best val epoch."""
    import json

    candidates = []
    for path in sorted(Path(train_dir).glob("*/train.json")):
        result = json.loads(path.read_text())
        loss = path.parent.name
        scored = Path(eval_dir) / f"{loss}.json" if eval_dir else None
        metrics = (
            json.loads(scored.read_text()) if scored and scored.is_file() else result["best_val"]
        )
        metrics.pop("confusion_matrix", None)
        candidates.append({"loss": loss, "run_id": result["run_id"],
                           "model_uri": result["model_uri"], "metrics": metrics})  # fmt: skip
    if not candidates:
        raise FileNotFoundError(f"no training results (*/train.json) under {train_dir}")
    return candidates


def _link_tree(src: Path, out: Path) -> None:
    """Copy a directory tree, hard-linking files where the filesystem allows it."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, out, copy_function=link_or_copy, dirs_exist_ok=True)
