"""Metrics: hand-computed confusion matrices, the present-class convention, torchmetrics parity."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchmetrics.functional.classification as tmf

from roadseg.metrics.segmentation import (
    ConfusionMatrix,
    confusion_matrix,
    dice_score,
    frequency_weighted_iou_score,
    iou_score,
    mean_accuracy_score,
    pixel_accuracy_score,
    precision_score,
    recall_score,
    segmentation_scores,
)

IGNORE = 255

# Valid pairs (truth, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the last pixel is ignored.
TARGET = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])
CM = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TARGET, 3, IGNORE)
    assert cm.dtype == torch.int64
    assert cm.tolist() == CM


def test_scores_by_hand() -> None:
    cm = torch.tensor(CM)
    assert pixel_accuracy_score(cm) == pytest.approx(3 / 5)
    assert recall_score(cm).tolist() == pytest.approx([1 / 2, 1.0, 0.0])
    assert mean_accuracy_score(cm) == pytest.approx(1 / 2)
    assert iou_score(cm).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert dice_score(cm).tolist() == pytest.approx([1 / 2, 4 / 5, 0.0])
    precision = precision_score(cm)
    assert precision[:2].tolist() == pytest.approx([1 / 2, 2 / 3])
    assert math.isnan(precision[2])  # class 2 never predicted: undefined, not 0


def test_segmentation_scores_by_hand() -> None:
    s = segmentation_scores(torch.tensor(CM), ["road", "car", "sky"])
    assert s["pixel_accuracy"] == pytest.approx(0.6)
    assert s["mean_accuracy"] == pytest.approx(0.5)
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["mdice"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    names = [c["name"] for c in s["per_class"]]
    assert names == ["road", "car", "sky"]
    sky = s["per_class"][2]
    assert sky == {
        "name": "sky",
        "iou": 0.0,
        "dice": 0.0,
        "precision": None,
        "recall": 0.0,
        "present": True,
        "pixels": 1,
        "bdd100k_iou": 0.0,
        "bdd100k_acc": 0.0,
    }


def test_means_skip_classes_absent_from_the_truth() -> None:
    """Class 3 is predicted once but never in the truth: its IoU is 0, but it is not averaged.

    torchmetrics' macro average counts it (a different convention), so the means differ there.
    """
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 3, 1, 1, 2])
    s = segmentation_scores(confusion_matrix(pred, target, 4, IGNORE))
    per = s["per_class"]
    assert [c["present"] for c in per] == [True, True, True, False]
    assert per[3]["iou"] == 0.0 and per[3]["recall"] is None
    assert s["miou"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert s["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    tm = tmf.multiclass_jaccard_index(pred, target, 4, average="macro", ignore_index=IGNORE)
    assert tm.item() == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)


def test_class_neither_present_nor_predicted_is_undefined() -> None:
    s = segmentation_scores(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3))
    assert s["miou"] == 1.0
    assert s["per_class"][2] == {
        "name": "2",
        "iou": None,
        "dice": None,
        "precision": None,
        "recall": None,
        "present": False,
        "pixels": 0,
        "bdd100k_iou": 0.0,
        "bdd100k_acc": 0.0,
    }


def test_all_ignored_split_gives_undefined_scores_not_errors() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), IGNORE))
    s = cm.compute()
    assert cm.matrix.sum() == 0
    assert s["pixel_accuracy"] is None and s["miou"] is None and s["mdice"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [2, 5, 14])
def test_matches_torchmetrics_on_random_data(seed: int, num_classes: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (3, 17, 23), generator=g)
    # A prediction correlated with the truth, so the scores are not all near 1/C.
    noise = torch.randint(0, num_classes, target.shape, generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target, noise)
    target[torch.rand(target.shape, generator=g) < 0.1] = IGNORE
    kw = {"num_classes": num_classes, "ignore_index": IGNORE}

    cm = confusion_matrix(pred, target, num_classes, IGNORE)
    assert torch.equal(cm, tmf.multiclass_confusion_matrix(pred, target, **kw))

    pairs = [
        (iou_score, tmf.multiclass_jaccard_index),
        (dice_score, tmf.multiclass_f1_score),
        (precision_score, tmf.multiclass_precision),
        (recall_score, tmf.multiclass_recall),
    ]
    for ours, theirs in pairs:
        expected = theirs(pred, target, average=None, **kw).double()
        torch.testing.assert_close(ours(cm), expected, rtol=1e-5, atol=1e-6)

    # Every class occurs in the truth here, so the macro conventions agree.
    assert bool((cm.sum(1) > 0).all())
    s = segmentation_scores(cm)
    macro = {"average": "macro", **kw}
    assert s["miou"] == pytest.approx(
        tmf.multiclass_jaccard_index(pred, target, **macro).item(), rel=1e-5
    )
    assert s["mdice"] == pytest.approx(
        tmf.multiclass_f1_score(pred, target, **macro).item(), rel=1e-5
    )
    assert s["mean_accuracy"] == pytest.approx(
        tmf.multiclass_accuracy(pred, target, **macro).item(), rel=1e-5
    )
    micro = tmf.multiclass_accuracy(pred, target, average="micro", **kw)
    assert s["pixel_accuracy"] == pytest.approx(micro.item(), rel=1e-5)


def test_accumulating_batches_equals_one_matrix_over_the_split() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 8, 9), generator=g)
    target[0, :3] = IGNORE
    logits = torch.randn(6, 4, 8, 9, generator=g)
    running = ConfusionMatrix(4, IGNORE)
    for i in range(0, 6, 2):
        running.update(logits[i : i + 2], target[i : i + 2])  # logits are argmax'ed
    whole = confusion_matrix(logits.argmax(1), target, 4, IGNORE)
    assert torch.equal(running.matrix, whole)
    assert running.compute() == segmentation_scores(whole)


def test_merge_and_reset() -> None:
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED, TARGET)
    b.update(PRED, TARGET)
    assert a.merge(b).matrix.tolist() == [[2 * v for v in row] for row in CM]
    a.reset()
    assert a.matrix.sum() == 0
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(4))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 3)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(torch.eye(3), ["a", "b"])


def test_class_ids_at_the_edges_of_the_range() -> None:
    """C - 1 is the last valid id, C the first invalid one, in the truth as in the prediction."""
    cm = confusion_matrix(torch.tensor([2, 0]), torch.tensor([0, 2]), 3)
    assert cm.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    for pred, target in (([0, 3], [0, 1]), ([0, 1], [3, 1]), ([-1, 1], [0, 1])):
        with pytest.raises(ValueError, match=r"in \[0, 3\) or 255 \(ignore\)"):
            confusion_matrix(torch.tensor(pred), torch.tensor(target), 3)
    # an id out of range on an ignored pixel is never looked at
    assert confusion_matrix(torch.tensor([9]), torch.tensor([255]), 3).sum() == 0


def test_running_matrix_with_its_own_ignore_index_and_one_class() -> None:
    """The running matrix passes its ignore index on; one class is a valid (trivial) problem;
    float class ids of the target's shape are ids, not logits to argmax."""
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(torch.tensor([[1, 2, 2]]), torch.tensor([[0, 2, 1]]))  # the first pixel is ignored
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert cm.matrix.dtype == torch.int64  # exact counts, summable across ranks
    cm.update(torch.tensor([[2.0, 1.0, 1.0]]), torch.tensor([[0, 2, 1]]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]
    one = ConfusionMatrix(1)
    one.update(torch.zeros(2, 2), torch.tensor([[0, 255], [0, 0]]))
    assert one.matrix.tolist() == [[3]] and one.compute()["miou"] == 1.0
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        ConfusionMatrix(0)


def test_matrix_starts_on_the_requested_device() -> None:
    """(Following the batches to another device: test_confusion_matrix_on_gpu_matches_cpu.)"""
    cm = ConfusionMatrix(3, device="meta")  # a second device on any machine (shape, no data)
    assert cm.matrix.device.type == "meta" and cm.matrix.dtype == torch.int64


def test_compute_names_the_classes() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    names = [c["name"] for c in cm.compute(["road", "car", "sky"])["per_class"]]
    assert names == ["road", "car", "sky"]
    assert [c["name"] for c in cm.compute()["per_class"]] == ["0", "1", "2"]


def test_frequency_weighted_iou_of_a_single_pixel() -> None:
    """One valid pixel, correctly predicted: fwIoU 1 (only an empty matrix is undefined)."""
    cm = torch.tensor([[0, 0], [0, 1]])
    assert frequency_weighted_iou_score(cm) == 1.0
    assert segmentation_scores(cm)["bdd100k_fwIoU"] == 1.0
    assert math.isnan(frequency_weighted_iou_score(torch.zeros(2, 2, dtype=torch.int64)))


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 2, 2)])
def test_scores_refuse_a_matrix_that_is_not_square(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"must be square (C, C), got {shape}")):
        segmentation_scores(torch.ones(shape, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_confusion_matrix_on_gpu_matches_cpu() -> None:
    target = torch.randint(0, 5, (2, 16, 16))
    pred = torch.randint(0, 5, (2, 16, 16))
    cm = ConfusionMatrix(5, IGNORE)
    cm.update(pred.cuda(), target.cuda())
    assert cm.matrix.is_cuda
    assert torch.equal(cm.matrix.cpu(), confusion_matrix(pred, target, 5, IGNORE))
