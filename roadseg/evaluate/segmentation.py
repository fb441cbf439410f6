"""Evaluation of a model, or of ready-made prediction masks, on a split at full resolution.

Both paths share one confusion matrix per split (`roadseg.metrics.segmentation`) and the same ground truth
reader as training (`roadseg.data.dataset.label_reader`: raw BDD100k masks are remapped 19 -> 14
on load), so a model's score and the score of its exported masks are identical:

    roadseg evaluate --model-uri models:/roadseg-unet@champion --data-dir data/bdd100k --split val
    roadseg evaluate --pred-dir preds/ --data-dir data/bdd100k --split val --json scores.json

Means (mIoU, mean Dice, mean accuracy) average over the classes present in the ground truth of
the split, as the BDD100k toolkit does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from roadseg.config import Params
from roadseg.data.bdd100k import read_image, write_mask
from roadseg.data.dataset import label_reader, list_split
from roadseg.data.transforms import resize_image, resize_mask
from roadseg.inference.predict import predict
from roadseg.inference.render import colorize, overlay
from roadseg.metrics.segmentation import ConfusionMatrix
from roadseg.models.spec import ModelSpec


def _check_spec(spec: ModelSpec, params: Params) -> None:
    if spec.num_classes != params.data.num_classes:
        raise ValueError(
            f"the model predicts {spec.num_classes} classes but dataset "
            f"{params.data.dataset!r} has {params.data.num_classes}"
        )


def evaluate_model(
    model: nn.Module,
    spec: ModelSpec,
    data_dir: Path,
    params: Params,
    split: str,
    *,
    device: torch.device | str | None = None,
    pred_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores of the model on a split; masks predicted at each image's full resolution.

    With `pred_dir`, the predicted masks are also written as `<stem>.png` (merged-class ids), the
    format `evaluate_predictions` reads.
    """
    _check_spec(spec, params)
    samples = list_split(data_dir, params, split)
    read_label = label_reader(data_dir, params)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    cm = ConfusionMatrix(spec.num_classes, params.data.ignore_index)
    bs = params.evaluate.batch_size
    for start in tqdm(range(0, len(samples), bs), desc=f"evaluate {split}", disable=not progress):
        chunk = samples[start : start + bs]
        images = [read_image(s.image) for s in chunk]
        for s, image, p in zip(
            chunk, images, predict(model, images, spec, device, bs), strict=True
        ):
            truth = read_label(s.label)
            if truth.shape != image.shape[:2]:
                raise ValueError(
                    f"{s.label}: label {truth.shape} and image {image.shape[:2]} differ"
                )
            cm.update(torch.tensor(p.mask, dtype=torch.long), torch.tensor(truth, dtype=torch.long))
            if pred_dir is not None:
                write_mask(Path(pred_dir) / f"{s.stem}.png", p.mask)
    scores = _finish(cm, spec.class_names, split, len(samples))
    if params.data.dataset == "kitti_road":  # the benchmark's measures need road probabilities
        from roadseg.evaluate.kitti import kitti_model_scores

        scores["kitti"] = kitti_model_scores(model, spec, samples, read_label, device=device,
                                             batch_size=bs, ignore_index=params.data.ignore_index)  # fmt: skip
    return scores


def read_prediction(
    path: Path, shape: tuple[int, int], num_classes: int, ignore: int
) -> np.ndarray:
    """A prediction mask, or a ValueError naming the file (missing, wrong size, bad ids)."""
    if not path.is_file():
        raise ValueError(f"missing prediction: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(f"prediction {path} must be a single-channel PNG, got {im.mode}")
            mask = np.asarray(im)
    except OSError as e:
        raise ValueError(f"prediction {path} is not a readable image ({e})") from e
    if mask.shape != shape:
        raise ValueError(f"prediction {path} has size {mask.shape}, the ground truth {shape}")
    bad = np.setdiff1d(np.unique(mask), [*range(num_classes), ignore])
    if bad.size:
        raise ValueError(f"prediction {path} has class ids {bad.tolist()} (0-{num_classes - 1})")
    return mask


def evaluate_predictions(
    pred_dir: Path, data_dir: Path, params: Params, split: str, *, progress: bool = True
) -> dict[str, Any]:
    """Scores of prediction masks `pred_dir/<stem>.png` (merged-class ids) against a split."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"prediction directory not found: {pred_dir}")
    samples = list_split(data_dir, params, split)
    read_label = label_reader(data_dir, params)
    n, ignore = params.data.num_classes, params.data.ignore_index
    cm = ConfusionMatrix(n, ignore)
    for s in tqdm(samples, desc=f"score {split}", disable=not progress):
        truth = read_label(s.label)
        pred = read_prediction(pred_dir / f"{s.stem}.png", truth.shape, n, ignore)
        cm.update(torch.tensor(pred, dtype=torch.long), torch.tensor(truth, dtype=torch.long))
    return _finish(cm, [c.name for c in params.data.class_table], split, len(samples))


def _finish(cm: ConfusionMatrix, names: Sequence[str], split: str, n: int) -> dict[str, Any]:
    scores = cm.compute(list(names))
    scores |= {"split": split, "num_images": n, "confusion_matrix": cm.matrix.cpu().tolist()}
    return scores


def metric_key(name: str) -> str:
    """An MLflow-safe metric name part: 'wall/fence' -> 'wall_fence'."""
    return "".join(c if c.isalnum() else "_" for c in name)


def flat_scores(scores: dict[str, Any], prefix: str) -> dict[str, float]:
    """Means as headline metrics (`val_miou`) and per-class IoU/Dice under a prefix
    (`val_iou/road`, `val_dice/road`): MLflow groups charts by the part before the `/`."""
    out = {
        f"{prefix}_{k}": scores[k]
        for k in ("pixel_accuracy", "mean_accuracy", "miou", "mdice")
        if scores.get(k) is not None
    }
    for c in scores["per_class"]:
        for k in ("iou", "dice"):
            if c[k] is not None:
                out[f"{prefix}_{k}/{metric_key(c['name'])}"] = c[k]
    if scores.get("kitti"):
        from roadseg.evaluate.kitti import flat_kitti_scores

        out |= flat_kitti_scores(scores["kitti"], prefix)
    return out


def log_scores(
    scores: dict[str, Any],
    run_id: str,
    tracking_uri: str,
    prefix: str,
    *,
    data_dir: Path | None = None,
    dataset: str | None = None,
) -> None:
    """Log scores (flat metrics + the full JSON) into an existing MLflow run.

    With `data_dir` and `dataset` (its name), the evaluated split is also logged as a dataset
    input `<dataset>-<split>`; its digest is the run's `dataset_version` param when it has one
    (no second hash of the data), else computed.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from roadseg import tracking

    client = MlflowClient(tracking_uri)
    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, 0) for k, v in flat_scores(scores, prefix).items()]
    client.log_batch(run_id, metrics=metrics)
    client.log_dict(run_id, scores, f"evaluation/{prefix}.json")
    if data_dir is not None and dataset:
        split = str(scores.get("split", "eval"))
        digest = client.get_run(run_id).data.params.get("dataset_version")
        digest = digest or tracking.dataset_version(Path(data_dir))
        entry = tracking.dataset_input(f"{dataset}-{split}", digest, str(data_dir), split)
        tracking.retry_locked(lambda: client.log_inputs(run_id, [entry]))  # variants race on it


def evaluate_source(
    data_dir: Path,
    params: Params,
    split: str,
    *,
    tracking_uri: str,
    model_uri: str | None = None,
    pred_dir: Path | None = None,
    save_preds: Path | None = None,
    run_id: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """What `roadseg evaluate` does: score a model (any URI `roadseg.models.io.load_model` reads)
    or a directory of prediction masks on `split`, then log the scores to `run_id` (default: the
    model's own run; none for masks without `run_id`).

    Returns:
        The scores, and one line saying which MLflow run they were logged to, or why not (a
        tracking failure never loses the scores); None when nothing was to be logged.

    Raises:
        ValueError: not exactly one of `model_uri` and `pred_dir`, or a bad model or mask.
        FileNotFoundError: a missing split, model or mask.
    """
    if (model_uri is None) == (pred_dir is None):
        raise ValueError("give exactly one of --model-uri and --pred-dir")
    if model_uri:
        import mlflow

        from roadseg.models.io import load_model

        mlflow.set_tracking_uri(tracking_uri)  # load_model resolves models:/ URIs with it
        model, spec, info = load_model(model_uri)
        scores = evaluate_model(model, spec, data_dir, params, split, pred_dir=save_preds)
        run_id = run_id or info.get("run_id")
    else:
        scores = evaluate_predictions(pred_dir, data_dir, params, split)
    if not run_id:
        return scores, None
    try:
        log_scores(scores, run_id, tracking_uri, prefix=f"eval_{split}", data_dir=data_dir,
                   dataset=params.data.dataset)  # fmt: skip
    except Exception as e:  # the scores are printed and written anyway
        return scores, f"warning: could not log to MLflow run {run_id}: {e}"
    return scores, f"logged to MLflow run {run_id}"


def confusion_figure(cm: Sequence[Sequence[int]], names: Sequence[str]) -> Any:
    """Row-normalised confusion matrix (rows = truth) as a matplotlib figure (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = 2 + 0.5 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(len(names)):
        for j in range(len(names)):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.tight_layout()
    return fig


def sample_grid(
    model: nn.Module,
    spec: ModelSpec,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    width: int = 320,
    alpha: float = 0.5,
) -> np.ndarray:
    """Rows of image | ground truth | prediction overlay, each panel `width` pixels wide."""
    preds = predict(model, list(images), spec)
    rows = []
    for image, truth, p in zip(images, truths, preds, strict=True):
        h = max(1, round(image.shape[0] * width / image.shape[1]))
        panels = [
            resize_image(image, (h, width)),
            resize_image(colorize(resize_mask(truth, (h, width)), spec.colors), (h, width)),
            resize_image(overlay(image, p.mask, spec.colors, alpha), (h, width)),
        ]
        rows.append(np.concatenate(panels, axis=1))
    widest = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 4), (0, widest - r.shape[1]), (0, 0))) for r in rows])


def score_tables(scores: dict[str, Any]) -> list[Any]:
    """Rich tables: the summary (Pixel Accuracy | Mean Accuracy | Mean IoU | Mean Dice), then
    per-class IoU / Dice / precision / recall."""
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    title = f"{scores.get('split', '')} ({scores.get('num_images', '?')} images)"
    summary = Table(title=title)
    for col in ("Pixel Accuracy", "Mean Accuracy", "Mean IoU", "Mean Dice"):
        summary.add_column(col, justify="right")
    summary.add_row(*(pct(scores[k]) for k in ("pixel_accuracy", "mean_accuracy", "miou", "mdice")))
    # The official toolkit's own fields: its "accuracy" is precision (see roadseg.metrics.segmentation).
    toolkit = Table(title="BDD100k toolkit fields (its Acc = TP / predicted pixels)")
    keys = ("bdd100k_pAcc", "bdd100k_mIoU", "bdd100k_mAcc", "bdd100k_fwIoU")
    for k in keys:
        toolkit.add_column(k, justify="right")
    toolkit.add_row(*(pct(scores.get(k)) for k in keys))
    per_class = Table(title="per class (%; n/a = absent from the ground truth and never predicted)")
    per_class.add_column("class")
    for col in ("IoU", "Dice", "Precision", "Recall", "bdd100k Acc", "Pixels"):
        per_class.add_column(col, justify="right")
    for c in scores["per_class"]:
        name = c["name"] if c["present"] else f"{c['name']} (absent)"
        cols = ("iou", "dice", "precision", "recall", "bdd100k_acc")
        per_class.add_row(name, *(pct(c.get(k)) for k in cols), str(c.get("pixels", "")))
    if scores.get("kitti"):
        from roadseg.evaluate.kitti import kitti_table

        return [summary, kitti_table(scores["kitti"]), per_class]
    return [summary, toolkit, per_class]
