"""Losses: hand-computed values on tiny tensors, ignore-index behaviour, gradients, factory."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from roadseg.losses import (
    DiceCELoss,
    DiceLoss,
    IoULoss,
    OhemCrossEntropyLoss,
    WeightedCrossEntropyLoss,
    build_loss,
)

IGNORE = 255
LN3 = math.log(3.0)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: intra-op threads only add OpenMP barrier overhead on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(ignored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, pixels A, B, C (and an ignored pixel D with extreme logits).

    softmax: A = [1/2, 1/2] truth 0; B = [1/4, 3/4] truth 1; C = [1/4, 3/4] truth 0.
    Per-pixel CE: A ln 2, B ln(4/3), C ln 4.
    """
    logits = [[0.0, 0.0], [0.0, LN3], [0.0, LN3]]
    target = [0, 1, 0]
    if ignored:
        logits.append([-30.0, 50.0])
        target.append(IGNORE)
    x = torch.tensor(logits).T.reshape(1, 2, 1, -1).clone().requires_grad_(True)
    return x, torch.tensor(target).reshape(1, 1, -1)


def two_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels A (softmax [1/2, 1/2], truth 0) and B (softmax [1/4, 3/4], truth 1)."""
    x = torch.tensor([[0.0, 0.0], [0.0, LN3]]).T.reshape(1, 2, 1, 2).clone()
    return x.requires_grad_(True), torch.tensor([[[0, 1]]])


CE = {"A": math.log(2), "B": math.log(4 / 3), "C": math.log(4)}


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (None, (CE["A"] + CE["B"] + CE["C"]) / 3),
        ([1.0, 3.0], (CE["A"] + 3 * CE["B"] + CE["C"]) / 5),
        ([0.5, 0.0], (CE["A"] + CE["C"]) / 2),
    ],
)
@pytest.mark.parametrize("ignored", [False, True])
def test_weighted_ce_by_hand(weight, expected: float, ignored: bool) -> None:
    x, t = tiny(ignored)
    w = None if weight is None else torch.tensor(weight)
    assert WeightedCrossEntropyLoss(w, IGNORE)(x, t).item() == pytest.approx(expected, rel=1e-5)


def test_weighted_ce_matches_torch_on_random_data() -> None:
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    t[0, :2] = IGNORE
    w = torch.rand(4) + 0.1
    ref = F.cross_entropy(x, t, weight=w, ignore_index=IGNORE)
    assert WeightedCrossEntropyLoss(w, IGNORE)(x, t).item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [
        (1 / 3, CE["C"]),  # ceil(1/3 * 3) = 1: only the hardest pixel
        (0.5, (CE["C"] + CE["A"]) / 2),  # ceil(1.5) = 2
        (1.0, (CE["A"] + CE["B"] + CE["C"]) / 3),  # everything: plain CE
        (1e-6, CE["C"]),  # at least one pixel
    ],
)
@pytest.mark.parametrize("ignored", [False, True])
def test_ohem_by_hand(top_k: float, expected: float, ignored: bool) -> None:
    x, t = tiny(ignored)
    assert OhemCrossEntropyLoss(top_k, IGNORE)(x, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("top_k", [0.0, -0.1, 1.5])
def test_ohem_rejects_bad_share(top_k: float) -> None:
    with pytest.raises(ValueError, match="top_k"):
        OhemCrossEntropyLoss(top_k)


# Two-pixel case: class 0: Σp·y = 1/2, Σp = 3/4, Σy = 1; class 1: Σp·y = 3/4, Σp = 5/4, Σy = 1.
@pytest.mark.parametrize(
    ("smooth", "expected"),
    [
        (0.0, 1 - (1 / 1.75 + 1.5 / 2.25) / 2),  # = 8/21
        (1.0, 1 - (2 / 2.75 + 2.5 / 3.25) / 2),
    ],
)
def test_dice_by_hand(smooth: float, expected: float) -> None:
    x, t = two_pixels()
    assert DiceLoss(smooth, IGNORE)(x, t).item() == pytest.approx(expected, rel=1e-5)


def test_dice_averages_over_classes_present_in_the_batch() -> None:
    """A third class, absent from the truth, is left out of the mean."""
    x, t = two_pixels()
    x3 = torch.cat([x.detach(), torch.full((1, 1, 1, 2), -100.0)], dim=1)
    assert DiceLoss(0.0)(x3, t).item() == pytest.approx(8 / 21, rel=1e-4)
    # Only class 0 present: pixel A alone gives Σp·y = 1/2, Σp = 1/2, Σy = 1 -> dice 2/3.
    assert DiceLoss(0.0)(x[..., :1], t[..., :1]).item() == pytest.approx(1 / 3, rel=1e-5)


def test_dice_perfect_prediction_is_zero() -> None:
    t = torch.tensor([[[0, 1, 2, 1]]])
    x = F.one_hot(t, 3).permute(0, 3, 1, 2).float() * 100
    assert DiceLoss(0.0)(x, t).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("dw", "cw"), [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (0.3, 2.0)])
def test_dice_ce_is_the_weighted_sum(dw: float, cw: float) -> None:
    x, t = two_pixels()
    expected = dw * (8 / 21) + cw * (CE["A"] + CE["B"]) / 2
    assert DiceCELoss(dw, cw, smooth=0.0)(x, t).item() == pytest.approx(expected, rel=1e-5)


def test_dice_ce_uses_class_weights_for_ce() -> None:
    x, t = two_pixels()
    loss = DiceCELoss(0.0, 1.0, smooth=0.0, weight=torch.tensor([1.0, 3.0]))
    assert loss(x, t).item() == pytest.approx((CE["A"] + 3 * CE["B"]) / 4, rel=1e-5)


def test_dice_ce_rejects_zero_weights() -> None:
    with pytest.raises(ValueError, match="dice_weight"):
        DiceCELoss(0.0, 0.0)


# Two-pixel case: class 1: I = 3/4, U = 5/4 + 1 - 3/4 = 3/2 -> J = 1/2;
# class 0: I = 1/2, U = 3/4 + 1 - 1/2 = 5/4 -> J = 2/5.
@pytest.mark.parametrize(
    ("classes", "smooth", "expected"),
    [
        ([1], 0.0, 0.5),
        ([1], 1.0, 1 - 1.75 / 2.5),
        (None, 0.0, 1 - (0.4 + 0.5) / 2),
        ([0, 1], 0.0, 1 - (0.4 + 0.5) / 2),
    ],
)
def test_iou_by_hand(classes, smooth: float, expected: float) -> None:
    x, t = two_pixels()
    assert IoULoss(smooth, IGNORE, classes)(x, t).item() == pytest.approx(expected, rel=1e-5)


def test_road_iou_without_road_pushes_road_probability_down() -> None:
    x = torch.zeros(1, 2, 2, 2, requires_grad=True)
    t = torch.zeros(1, 2, 2, dtype=torch.long)  # no road pixel
    loss = IoULoss(1.0, IGNORE, [1])(x, t)
    assert loss.item() == pytest.approx(1 - 1 / 3, rel=1e-5)  # 1 − (0 + 1) / (2 + 0 − 0 + 1)
    loss.backward()
    assert (x.grad[:, 1] > 0).all()  # gradient descent lowers the road logit


ALL_LOSSES = [
    pytest.param(lambda: WeightedCrossEntropyLoss(torch.tensor([1.0, 2.0, 0.5])), id="wce"),
    pytest.param(lambda: OhemCrossEntropyLoss(0.3), id="ohem"),
    pytest.param(lambda: DiceLoss(1.0), id="dice"),
    pytest.param(lambda: DiceLoss(0.0), id="dice-nosmooth"),
    pytest.param(lambda: DiceCELoss(0.5, 0.5, 1.0), id="dice_ce"),
    pytest.param(lambda: IoULoss(0.0), id="iou"),
    pytest.param(lambda: IoULoss(0.0, classes=[1]), id="iou-road"),
]


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_ignored_pixels_change_nothing(make) -> None:
    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    t[0, 0] = IGNORE
    noisy = x.clone()
    noisy[0, :, 0] = torch.randn(3, 5) * 50  # wild logits where the target is ignored
    noisy.requires_grad_(True)
    loss_fn = make()
    loss = loss_fn(noisy, t)
    assert loss.item() == pytest.approx(loss_fn(x, t).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(noisy.grad).all()
    assert noisy.grad[0, :, 0].abs().max() == 0


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_all_ignore_gives_zero_with_a_gradient(make) -> None:
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss = make()(x, torch.full((2, 4, 5), IGNORE))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_gradients_finite_and_loss_positive(make, scale: float) -> None:
    torch.manual_seed(2)
    x = (torch.randn(2, 3, 6, 7) * scale).requires_grad_(True)
    loss = make()(x, torch.randint(0, 3, (2, 6, 7)))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_bf16_logits_give_float32_loss(make) -> None:
    torch.manual_seed(3)
    x, t = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    low = make()(x.bfloat16(), t)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(make()(x.bfloat16().float(), t).item(), rel=1e-5)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not match"):
        DiceLoss()(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        DiceLoss()(torch.randn(2, 4, 4), torch.zeros(2, 4, dtype=torch.long))


def loss_params(name: str, **kw) -> SimpleNamespace:
    base = {"ohem_top_k": 0.25, "dice_weight": 0.5, "ce_weight": 0.5, "smooth": 1.0}
    return SimpleNamespace(name=name, **{**base, **kw})


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("wce", WeightedCrossEntropyLoss),
        ("ohem", OhemCrossEntropyLoss),
        ("dice", DiceLoss),
        ("dice_ce", DiceCELoss),
        ("iou", IoULoss),
    ],
)
def test_build_loss_from_params(params, name: str, cls: type) -> None:
    lp = params.loss.model_copy(update={"name": name})
    loss = build_loss(lp, num_classes=14, ignore_index=IGNORE, class_weights=torch.ones(14))
    assert isinstance(loss, cls)
    x, t = torch.randn(1, 14, 4, 4, requires_grad=True), torch.randint(0, 14, (1, 4, 4))
    loss(x, t).backward()


def test_build_loss_passes_params_through() -> None:
    ohem = build_loss(
        loss_params("ohem", ohem_top_k=0.1), num_classes=3, ignore_index=7, class_weights=None
    )
    assert (ohem.top_k, ohem.ignore_index) == (0.1, 7)
    dce = build_loss(
        loss_params("dice_ce", dice_weight=0.2, ce_weight=0.8, smooth=0.5),
        num_classes=3,
        ignore_index=IGNORE,
        class_weights=[1.0, 2.0, 3.0],
    )
    assert (dce.dice_weight, dce.ce_weight, dce.dice.smooth) == (0.2, 0.8, 0.5)
    assert dce.weight.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("num_classes", "classes"), [(2, [1]), (14, None)])
def test_build_iou_targets_road_for_binary_models(num_classes: int, classes) -> None:
    loss = build_loss(
        loss_params("iou"), num_classes=num_classes, ignore_index=IGNORE, class_weights=None
    )
    assert loss.classes == classes


def test_wce_without_weights_is_an_error() -> None:
    with pytest.raises(ValueError, match="'wce' needs class weights"):
        build_loss(loss_params("wce"), num_classes=3, ignore_index=IGNORE, class_weights=None)


def test_unknown_loss_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'focal'.*wce, ohem, dice, dice_ce, iou"):
        build_loss(loss_params("focal"), num_classes=3, ignore_index=IGNORE, class_weights=None)


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, float("nan"), 1.0], [1.0, -1.0, 1.0]])
def test_bad_class_weights_are_rejected(weights) -> None:
    with pytest.raises(ValueError, match="class_weights"):
        build_loss(
            loss_params("wce"),
            num_classes=3,
            ignore_index=IGNORE,
            class_weights=torch.tensor(weights),
        )
