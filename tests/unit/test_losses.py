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


def batch_with_label(label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 3-class logits and targets in which some pixels carry `label`."""
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 4, 5), generator=g)
    t[0, 1] = label
    t[1, :, 2] = label
    return x, t


def test_built_losses_compute_their_formula_with_the_given_ignore_index_and_params() -> None:
    """Each built loss equals its functional with the params and the ignore index it was built
    with (7 here: pixels labelled 7 are skipped, and 255 is then an ordinary invalid id)."""
    from roadseg.losses import _functional as fn

    x, t = batch_with_label(7)
    w = torch.tensor([0.5, 1.0, 2.0])
    p = loss_params("x", ohem_top_k=0.4, dice_weight=0.3, ce_weight=0.9, smooth=0.7)
    want = {
        "wce": fn.weighted_cross_entropy(x, t, w, ignore_index=7),
        "ohem": fn.ohem_cross_entropy(x, t, 0.4, ignore_index=7),
        "dice": fn.soft_dice_loss(x, t, 0.7, ignore_index=7),
        "dice_ce": 0.3 * fn.soft_dice_loss(x, t, 0.7, ignore_index=7)
        + 0.9 * fn.weighted_cross_entropy(x, t, w, ignore_index=7),
        "iou": fn.soft_jaccard_loss(x, t, 0.7, ignore_index=7),
    }
    for name, value in want.items():
        p.name = name
        loss = build_loss(p, num_classes=3, ignore_index=7, class_weights=w)
        assert loss(x, t).item() == pytest.approx(value.item(), rel=1e-6), name
        valid = t != 7  # the same as dropping the ignored pixels' contribution by hand
        assert loss(x, torch.where(valid, t, 0)).item() != pytest.approx(value.item()), name
    p.name = "iou"
    road = build_loss(p, num_classes=2, ignore_index=7, class_weights=None)
    x2, t2 = x[:, :2], torch.where(t == 7, 7, t % 2)
    want2 = fn.soft_jaccard_loss(x2, t2, 0.7, ignore_index=7, classes=[1])
    assert road(x2, t2).item() == pytest.approx(want2.item(), rel=1e-6)


def test_documented_defaults() -> None:
    """Functions and classes default to ignore index 255, Dice smoothing 1, IoU smoothing 0,
    OHEM top 25% and Dice + CE weights 0.5 / 0.5 with smoothing 1."""
    from roadseg.losses import _functional as fn

    x, t = batch_with_label(255)
    w = torch.tensor([0.5, 1.0, 2.0])
    pairs = [
        (fn.weighted_cross_entropy(x, t, w), fn.weighted_cross_entropy(x, t, w, ignore_index=255)),
        (fn.ohem_cross_entropy(x, t, 0.5), fn.ohem_cross_entropy(x, t, 0.5, ignore_index=255)),
        (fn.soft_dice_loss(x, t), fn.soft_dice_loss(x, t, 1.0, ignore_index=255)),
        (fn.soft_jaccard_loss(x, t), fn.soft_jaccard_loss(x, t, 0.0, ignore_index=255)),
        (DiceLoss()(x, t), fn.soft_dice_loss(x, t, 1.0, 255)),
        (IoULoss()(x, t), fn.soft_jaccard_loss(x, t, 0.0, 255)),
        (OhemCrossEntropyLoss()(x, t), fn.ohem_cross_entropy(x, t, 0.25, 255)),
        (DiceCELoss()(x, t),
         0.5 * fn.soft_dice_loss(x, t, 1.0, 255) + 0.5 * fn.weighted_cross_entropy(x, t)),
    ]  # fmt: skip
    for i, (got, want) in enumerate(pairs):
        assert got.item() == pytest.approx(want.item(), rel=1e-6), i
    # the defaults matter: other smoothing gives other values on this batch
    assert fn.soft_dice_loss(x, t).item() != pytest.approx(fn.soft_dice_loss(x, t, 2.0).item())
    assert fn.soft_jaccard_loss(x, t).item() != pytest.approx(
        fn.soft_jaccard_loss(x, t, 1.0).item()
    )


def test_jaccard_means_over_present_classes_and_scores_absent_ones_against_predictions() -> None:
    """Two pixels, both class 0, probabilities [0.9, 0.1]: class 0 IoU = 1.8 / 2 = 0.9; class 1
    is absent from the truth, so its IoU (0 / 0.2 = 0) counts only when it is asked for."""
    from roadseg.losses._functional import soft_jaccard_loss

    p = torch.tensor([0.9, 0.1])
    x = p.log().view(1, 2, 1, 1).expand(1, 2, 1, 2).clone()
    t = torch.zeros(1, 1, 2, dtype=torch.long)
    assert soft_jaccard_loss(x, t).item() == pytest.approx(0.1, rel=1e-5)
    assert soft_jaccard_loss(x, t, classes=[1]).item() == pytest.approx(1.0, rel=1e-6)
    assert soft_jaccard_loss(x, t, classes=[0, 1]).item() == pytest.approx(0.55, rel=1e-5)


def test_all_ignore_zero_is_positive_zero() -> None:
    """The all-ignore 0 is +0.0 even when the logits sum to a negative number."""
    from roadseg.losses._functional import ohem_cross_entropy

    x = torch.full((1, 2, 2, 2), -3.0, requires_grad=True)
    loss = ohem_cross_entropy(x, torch.full((1, 2, 2), IGNORE), 0.5)
    assert loss.item() == 0.0 and math.copysign(1.0, loss.item()) == 1.0


def test_float64_and_integer_weights_are_used_as_float32() -> None:
    from roadseg.losses._functional import weighted_cross_entropy

    x, t = batch_with_label(255)
    w32 = torch.tensor([1.0, 2.0, 3.0])
    want = weighted_cross_entropy(x, t, w32).item()
    assert weighted_cross_entropy(x, t, w32.double()).item() == pytest.approx(want, rel=1e-6)
    for module in (WeightedCrossEntropyLoss([1, 2, 3]), DiceCELoss(weight=[1, 2, 3])):
        assert module.weight.dtype == torch.float32  # a buffer that follows .to(device)
    assert WeightedCrossEntropyLoss([1, 2, 3])(x, t).item() == pytest.approx(want, rel=1e-6)


def test_zero_class_weights_are_accepted() -> None:
    """class_stats.json gives weight 0 to a class with no pixels; build_loss must take it."""
    loss = build_loss(loss_params("wce"), num_classes=3, ignore_index=IGNORE,
                      class_weights=[0.0, 0.5, 2.5])  # fmt: skip
    assert loss.weight.tolist() == [0.0, 0.5, 2.5]


def test_input_checks_name_the_bad_value() -> None:
    from roadseg.losses._functional import ohem_cross_entropy

    x, t = batch_with_label(255)
    for top_k in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"top_k must be in \(0, 1\], got {top_k}"):
            ohem_cross_entropy(x, t, top_k)
    assert ohem_cross_entropy(x, t, 1.0).item() > 0
    with pytest.raises(ValueError, match="Dice smooth must be >= 0, got -1"):
        DiceLoss(-1)
    with pytest.raises(ValueError, match=r"IoU smooth must be >= 0, got -0\.5"):
        IoULoss(-0.5)
    with pytest.raises(ValueError, match="must be >= 0 and not both 0, got -1 and 2"):
        DiceCELoss(-1, 2)
    with pytest.raises(ValueError, match=r"expected logits \(N, C, H, W\) and target \(N, H, W\)"):
        DiceLoss()(x, t[0])  # 4-D logits, 2-D target
    with pytest.raises(
        ValueError, match=r"'wce' needs class weights: pass class_weights \(the 'weights' of "
        r"class_stats.json, written by `roadseg data remap`\)"
    ):  # fmt: skip
        build_loss(loss_params("wce"), num_classes=3, ignore_index=IGNORE, class_weights=None)
