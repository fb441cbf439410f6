"""The BDD100k toolkit's fields (scalabel.eval.sem_seg), derived by hand and from raw pixels.

The toolkit builds a (C+1)×(C+1) histogram whose last row/column is "ignored": truth 255 pixels
are dropped, predictions >= C land in the last column. Its per-class Acc is diag / column sum
(precision, NaN -> 0), mAcc and mIoU average over the classes present in the truth, fIoU weighs
IoU (NaN -> 0) by the truth share of each class, pAcc is diag sum / total.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from roadseg.metrics.segmentation import (
    bdd100k_accuracy_score,
    bdd100k_mean_accuracy_score,
    confusion_matrix,
    frequency_weighted_iou_score,
    segmentation_scores,
)

# Rows = truth, columns = prediction.
# class 0: present and predicted; class 1: present, never predicted; class 2: absent from the
# truth but predicted (a false positive only); class 3: neither present nor predicted.
CM4 = torch.tensor([[4, 0, 1, 0], [2, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_toolkit_accuracy_is_precision_with_zero_for_never_predicted() -> None:
    # column sums 6, 0, 2, 0 -> 4/6, 0/0 -> 0, 0/2, 0/0 -> 0
    assert bdd100k_accuracy_score(CM4).tolist() == pytest.approx([2 / 3, 0.0, 0.0, 0.0])


def test_toolkit_means_by_hand() -> None:
    # present classes {0, 1}: mAcc = (2/3 + 0) / 2; recall mean would be (4/5 + 0) / 2 = 0.4
    assert bdd100k_mean_accuracy_score(CM4) == pytest.approx(1 / 3)
    # IoU 0 = 4 / (5 + 6 - 4) = 4/7, IoU 1 = 0; truth shares 5/8, 3/8
    assert frequency_weighted_iou_score(CM4) == pytest.approx(5 / 8 * 4 / 7)


def test_segmentation_scores_carry_toolkit_fields_next_to_ours() -> None:
    s = segmentation_scores(CM4, ["road", "car", "sky", "pole"])
    assert s["mean_accuracy"] == pytest.approx(0.4)  # ours: mean recall, unchanged
    assert s["bdd100k_mAcc"] == pytest.approx(1 / 3)
    assert s["bdd100k_fwIoU"] == pytest.approx(5 / 14)
    assert s["bdd100k_pAcc"] == pytest.approx(4 / 8) == s["pixel_accuracy"]
    assert s["bdd100k_mIoU"] == pytest.approx((4 / 7 + 0) / 2) == s["miou"]
    per = {c["name"]: c for c in s["per_class"]}
    assert per["road"]["bdd100k_acc"] == pytest.approx(2 / 3) == per["road"]["precision"]
    assert per["car"]["precision"] is None and per["car"]["bdd100k_acc"] == 0.0
    assert per["pole"]["iou"] is None and per["pole"]["bdd100k_iou"] == 0.0
    assert per["sky"]["bdd100k_iou"] == 0.0 and per["sky"]["bdd100k_acc"] == 0.0
    json.dumps(s, allow_nan=False)  # no NaN leaks into the JSON


def test_asymmetric_matrix_tells_rows_from_columns() -> None:
    """A transposed matrix (rows = prediction) would swap precision and recall: caught here."""
    cm = torch.tensor([[6, 3], [1, 2]])  # truth 0: 9 pixels, truth 1: 3 pixels
    s = segmentation_scores(cm)
    assert [c["bdd100k_acc"] for c in s["per_class"]] == pytest.approx([6 / 7, 2 / 5])
    assert [c["recall"] for c in s["per_class"]] == pytest.approx([6 / 9, 2 / 3])
    iou = [6 / (9 + 7 - 6), 2 / (3 + 5 - 2)]
    assert s["bdd100k_fwIoU"] == pytest.approx(9 / 12 * iou[0] + 3 / 12 * iou[1])


def test_empty_matrix_gives_undefined_toolkit_fields() -> None:
    s = segmentation_scores(torch.zeros(3, 3, dtype=torch.int64))
    assert s["bdd100k_mAcc"] is None and s["bdd100k_fwIoU"] is None and s["bdd100k_pAcc"] is None


def _toolkit_from_pixels(gt: np.ndarray, pred: np.ndarray, c: int) -> dict[str, object]:
    """The toolkit's recipe, written out independently with numpy from raw pixels."""
    gt = np.where(gt == 255, c, gt).ravel()
    pred = np.minimum(pred.ravel(), c)
    keep = gt < c
    hist = np.bincount((c + 1) * gt[keep] + pred[keep], minlength=(c + 1) ** 2)
    hist = hist.reshape(c + 1, c + 1).astype(np.float64)
    diag = np.diag(hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.nan_to_num(diag / (hist.sum(1) + hist.sum(0) - diag))[:-1]
        acc = np.nan_to_num(diag / hist.sum(0))[:-1]
    present = sorted(set(np.unique(gt[keep]).tolist()))
    freq = hist[:-1].sum(1) / hist[:-1].sum()
    return {
        "iou": iou,
        "acc": acc,
        "mIoU": iou[present].mean(),
        "mAcc": acc[present].mean(),
        "fIoU": (iou * freq).sum(),
        "pAcc": diag[:-1].sum() / hist[:-1].sum(),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_the_toolkit_recipe_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = 6
    gt = rng.integers(0, c - 1, size=(40, 50))  # class 5 never in the truth
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, c, size=gt.shape))
    pred[pred == 255] = 0
    ref = _toolkit_from_pixels(gt, pred, c)
    s = segmentation_scores(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), c))
    assert [p["bdd100k_iou"] for p in s["per_class"]] == pytest.approx(ref["iou"].tolist())
    assert [p["bdd100k_acc"] for p in s["per_class"]] == pytest.approx(ref["acc"].tolist())
    for ours, theirs in (("bdd100k_mIoU", "mIoU"), ("bdd100k_mAcc", "mAcc"),
                         ("bdd100k_fwIoU", "fIoU"), ("bdd100k_pAcc", "pAcc")):  # fmt: skip
        assert s[ours] == pytest.approx(ref[theirs]), ours
    assert not math.isclose(s["bdd100k_mAcc"], s["mean_accuracy"])  # precision, not recall


def _write_pair(root: Path, stem: str, truth: np.ndarray, pred: np.ndarray, preds: Path) -> None:
    img = root / "images/10k/val" / f"{stem}.png"
    lab = root / "labels/sem_seg/masks/val" / f"{stem}.png"
    for p in (img.parent, lab.parent, preds):
        p.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*truth.shape, 3), np.uint8)).save(img)
    Image.fromarray(truth.astype(np.uint8)).save(lab)
    Image.fromarray(pred.astype(np.uint8)).save(preds / f"{stem}.png")


def test_evaluate_cli_prints_and_writes_toolkit_fields(tmp_path: Path) -> None:
    """`roadseg evaluate --pred-dir` on a hand-made remapped dataset: JSON and table."""
    from roadseg.cli import app

    data, preds = tmp_path / "data", tmp_path / "preds"
    truth = np.zeros((4, 6), np.uint8)
    truth[:, :3] = 1  # road (1) on the left 3 columns
    truth[0, 5] = 255  # ignored: the road predicted there must not count
    pred = np.zeros((4, 6), np.uint8)
    pred[:, :5] = 1
    pred[0, 5] = 1
    _write_pair(data, "a", truth, pred, preds)
    (data / "remap.json").write_text("{}")  # masks hold merged ids already
    out = tmp_path / "scores.json"
    args = ["evaluate", "--pred-dir", str(preds), "--data-dir", str(data), "--split", "val"]
    res = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    cm = np.asarray(s["confusion_matrix"])
    # 23 valid pixels; truth 0: 11 (8 predicted road), truth 1: 12 (all predicted road)
    assert cm[:2, :2].tolist() == [[3, 8], [0, 12]] and cm.sum() == 23
    assert s["mean_accuracy"] == pytest.approx((3 / 11 + 12 / 12) / 2)  # recall
    assert s["bdd100k_mAcc"] == pytest.approx((3 / 3 + 12 / 20) / 2)  # precision
    iou0, iou1 = 3 / 11, 12 / 20
    assert s["bdd100k_fwIoU"] == pytest.approx(11 / 23 * iou0 + 12 / 23 * iou1)
    assert s["per_class"][1]["bdd100k_acc"] == pytest.approx(0.6)
    for key in ("bdd100k_mAcc", "bdd100k_fwIoU", "bdd100k Acc"):
        assert key in res.output
    for v in (s["bdd100k_mAcc"], s["bdd100k_fwIoU"]):
        assert f"{100 * v:.2f}" in res.output
