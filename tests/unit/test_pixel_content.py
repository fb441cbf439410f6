"""Pixel content, not only shapes, through the code that transforms pixels in serving/evaluation.

A fixed model with a known spatial answer (each pixel's class is the colour of that pixel: red 0,
green 1, blue 2) is run through `predict` on images whose layout is asymmetric left/right and
top/bottom, so a mirrored mask, a BGR image, a swapped batch or a shifted crop all give a
different mask. The U-Nets' pad-and-crop is checked against padding by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roadseg.data.transforms import normalize, resize_image, resize_mask
from roadseg.inference.predict import predict, preprocess
from roadseg.inference.render import colorize, overlay
from roadseg.models import build_model
from roadseg.models.spec import ModelSpec

RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # class k has colour RGB[k]


@pytest.fixture
def spec(params) -> ModelSpec:
    return ModelSpec.from_params(params, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class ColourModel(torch.nn.Module):
    """1×1 conv: logit k = normalised channel k for k < 3; other classes a fixed -10."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-10.0)
            for k in range(3):
                self.conv.weight[k, k] = 1.0
                self.conv.bias[k] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def layout(h: int, w: int) -> np.ndarray:
    """Class ids: top 2/3 red (left third) | green; bottom third blue (left 3/4) | red."""
    m = np.ones((h, w), np.uint8)
    top, left = round(2 * h / 3), round(w / 3)
    m[:top, :left] = 0
    m[top:] = 2
    m[top:, round(3 * w / 4) :] = 0
    return m


def interior(m: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose (2·margin+1)² neighbourhood holds one class (far from every boundary)."""
    h, w = m.shape
    pad = np.pad(m.astype(np.int16), margin, mode="edge")
    same = np.ones((h, w), bool)
    for dy in range(2 * margin + 1):
        for dx in range(2 * margin + 1):
            same &= pad[dy : dy + h, dx : dx + w] == m
    return same


@pytest.mark.parametrize("size", [(41, 64), (720, 1280), (15, 23), (200, 90), (96, 160)])
def test_predict_gives_each_pixel_its_own_class(spec: ModelSpec, size: tuple[int, int]) -> None:
    truth = layout(*size)
    (p,) = predict(ColourModel(spec.num_classes), [RGB[truth]], spec)
    sh, sw = spec.image_size
    # bilinear down- then up-sampling blurs a boundary over about one model pixel (in input
    # pixels: the input/model size ratio) or one input pixel, whichever is larger
    margin = 1 + math.ceil(max(size[0] / sh, size[1] / sw, 1))
    keep = interior(truth, margin)
    assert keep.mean() > 0.3
    assert (p.mask[keep] == truth[keep]).all()
    assert (p.mask == truth).mean() > 0.9
    for k, name in enumerate(spec.class_names):
        assert p.class_shares[name] == pytest.approx((p.mask == k).mean())


def test_predict_keeps_images_and_masks_paired_across_batches(spec: ModelSpec) -> None:
    """Different layouts and sizes in one call, split over batches of 2: each mask is its own."""
    truths = [layout(60, 90), layout(90, 60)[::-1], layout(45, 70)[:, ::-1], np.full((30, 40), 2)]
    images = [RGB[t] for t in truths]
    preds = predict(ColourModel(spec.num_classes), images, spec, batch_size=2)
    for t, p in zip(truths, preds, strict=True):
        keep = interior(t, 4)
        assert (p.mask[keep] == t[keep]).all()


def test_confidence_of_a_uniform_image_by_hand(spec: ModelSpec) -> None:
    """Red normalises to (2, -2, -2): logits (2, -2, -2, -10 × 11); confidence = max softmax."""
    (p,) = predict(ColourModel(spec.num_classes), [np.tile(RGB[0], (20, 30, 1))], spec)
    others = 2 * math.exp(-2) + (spec.num_classes - 3) * math.exp(-10)
    assert p.confidence == pytest.approx(math.exp(2) / (math.exp(2) + others), rel=1e-5)
    assert (p.mask == 0).all() and p.class_shares[spec.class_names[0]] == 1.0


def test_normalize_keeps_channel_order_and_per_channel_stats() -> None:
    image = np.array([[[10, 120, 250], [0, 0, 0]]], np.uint8)  # (1, 2, 3)
    mean, std = (0.1, 0.4, 0.7), (0.2, 0.3, 0.5)
    x = normalize(image, mean, std)
    assert x.shape == (3, 1, 2)
    want = [(10 / 255 - 0.1) / 0.2, (120 / 255 - 0.4) / 0.3, (250 / 255 - 0.7) / 0.5]
    assert x[:, 0, 0].tolist() == pytest.approx(want, rel=1e-6)
    assert x[:, 0, 1].tolist() == pytest.approx([-0.5, -0.4 / 0.3, -1.4], rel=1e-6)


def test_preprocess_keeps_layout_through_the_resize(spec: ModelSpec) -> None:
    truth = layout(300, 500)
    x = preprocess([RGB[truth]], spec)[0]
    small = layout(*spec.image_size)
    keep = interior(small, 2)
    # the channel holding +2 (the pixel's colour at full intensity) is the class
    assert (x.argmax(0).numpy()[keep] == small[keep]).all()
    assert torch.allclose(x.amax(0)[torch.from_numpy(keep)], torch.tensor(2.0), atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "baseline"])
@pytest.mark.parametrize("size", [(37, 53), (16, 33), (50, 16)])
def test_pad_and_crop_equals_running_on_the_padded_input(name: str, size: tuple[int, int]) -> None:
    """Logits for an odd-sized input are the top-left (H, W) of the logits of the input zero-padded
    at the bottom and right to a multiple of 16."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=4, base_channels=4)
    h, w = size
    x = torch.randn(2, 3, h, w)
    ph, pw = -h % 16, -w % 16
    with torch.no_grad():
        # Fresh BatchNorm statistics (mean 0, var 1) shrink the signal until the logits hardly
        # depend on the input; one cumulative pass gives real statistics and input-driven logits.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()(x)
        model.eval()
        got = model(x)
        full = model(F.pad(x, (0, pw, 0, ph)))
    assert got.shape == (2, 4, h, w)
    torch.testing.assert_close(got, full[..., :h, :w], rtol=1e-4, atol=1e-5)
    if ph or pw:  # another corner of the padded logits really differs (the test can fail)
        assert (got - full[..., ph:, pw:]).abs().amax() > 0.1 * got.std()


def test_colorize_uses_the_palette_in_class_order(spec: ModelSpec) -> None:
    ids = np.array([[*range(spec.num_classes), 255]], np.uint8)
    rgb = colorize(ids, spec.colors)
    for k in range(spec.num_classes):
        assert tuple(rgb[0, k]) == tuple(spec.colors[k]), spec.class_names[k]
    assert tuple(rgb[0, -1]) == (0, 0, 0)
    assert len(set(map(tuple, spec.colors))) == spec.num_classes  # distinct, so order matters


def test_overlay_blends_each_pixel_by_hand() -> None:
    colors = [(255, 0, 0), (0, 0, 200)]
    image = np.array([[[100, 50, 200], [10, 20, 30]]], np.uint8)
    mask = np.array([[0, 1]], np.uint8)
    out = overlay(image, mask, colors, alpha=0.25)
    # 0.75 * image + 0.25 * colour, rounded
    assert out[0, 0].tolist() == [139, 38, 150]
    assert out[0, 1].tolist() == [8, 15, 72]
    ignored = overlay(image, np.array([[255, 255]], np.uint8), colors, alpha=0.25)
    assert ignored[0, 0].tolist() == [75, 38, 150]  # ignore: blended with black


def test_resize_mask_is_nearest_neighbour_exactly() -> None:
    mask = np.array([[0, 7], [13, 255]], np.uint8)
    up = resize_mask(mask, (4, 6))
    assert up.tolist() == [[0] * 3 + [7] * 3] * 2 + [[13] * 3 + [255] * 3] * 2
    stripes = np.tile(np.array([1, 9], np.uint8), (6, 4))  # columns 1, 9, 1, 9, ...
    down = resize_mask(stripes, (3, 4))
    assert set(np.unique(down)) <= {1, 9}  # a bilinear resize would invent 5


def test_resize_image_keeps_left_right_and_colours() -> None:
    truth = layout(90, 120)
    small = resize_image(RGB[truth], (30, 40))
    want = layout(30, 40)
    keep = interior(want, 2)
    assert (small[keep] == RGB[want][keep]).all()


class RampLogits(torch.nn.Module):
    """Fixed logits whatever the image: class 0 = column index j, class 1 = row index i + 0.37,
    class 2 = 2.9, on the model's (h, w) grid.

    Bilinear interpolation (align_corners=False, as `F.interpolate`) reproduces a linear ramp
    exactly, so the upsampled logits at output pixel (y, x) are known in closed form:
    class 0 = clip((x + 0.5) * w / W - 0.5, 0, w - 1), class 1 likewise in y, plus 0.37.
    Nearest-neighbour upsampling gives whole numbers instead, so the class boundaries move.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        h, w = size
        i, j = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                              torch.arange(w, dtype=torch.float32), indexing="ij")  # fmt: skip
        self.register_buffer("logits", torch.stack([j, i + 0.37, torch.full_like(i, 2.9)]))
        self.unused = torch.nn.Parameter(torch.zeros(1))  # predict reads the device from it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, *self.logits.shape[1:])
        return self.logits.expand(x.shape[0], -1, -1, -1)


def ramp_source(out: int, size: int, mode: str) -> np.ndarray:
    """The ramp's value at each of `out` output positions, by the textbook formula of `mode`."""
    dst = np.arange(out, dtype=np.float64)
    if mode == "bilinear":  # half-pixel centres (align_corners=False)
        return np.clip((dst + 0.5) * size / out - 0.5, 0, size - 1)
    if mode == "align_corners":
        return dst * (size - 1) / max(out - 1, 1)
    return np.floor(dst * size / out)  # nearest (PyTorch's "nearest")


def ramp_truth(h: int, w: int, size: tuple[int, int], mode: str):
    """Expected mask (argmax), max softmax, and where the answer is sure: the two best logits of
    `RampLogits` upsampled differ by more than float32 rounding could change (1e-4)."""
    sy, sx = ramp_source(h, size[0], mode), ramp_source(w, size[1], mode)
    logits = np.stack(np.broadcast_arrays(sx[None, :], sy[:, None] + 0.37, np.full((h, 1), 2.9)))
    top = np.sort(logits, axis=0)
    conf = 1 / np.exp(logits - logits.max(0)).sum(0)
    return logits.argmax(0).astype(np.uint8), conf, top[-1] - top[-2] > 1e-4


RAMP_SPEC = ModelSpec(
    model_name="fixed", num_classes=3, in_channels=3, base_channels=1, image_size=(4, 5),
    mean=(0.5,) * 3, std=(0.25,) * 3, class_names=("col", "row", "flat"),
    colors=((255, 0, 0), (0, 255, 0), (0, 0, 255)),
)  # fmt: skip


@pytest.mark.parametrize("size", [(37, 50), (720, 1280), (9, 13), (3, 4), (1, 1)])
def test_predict_upsamples_logits_bilinearly_with_half_pixel_centres(size) -> None:
    """Every pixel of the mask (and the confidence) equals the closed-form bilinear answer; the
    nearest-neighbour and align_corners=True answers differ from it, so either would fail."""
    h, w = size
    model = RampLogits(RAMP_SPEC.image_size)
    (p,) = predict(model, [np.zeros((h, w, 3), np.uint8)], RAMP_SPEC)
    want, conf, sure = ramp_truth(h, w, RAMP_SPEC.image_size, "bilinear")
    assert sure.mean() > 0.999  # near-ties only on a few pixels of the diagonal boundary
    np.testing.assert_array_equal(p.mask[sure], want[sure])
    assert p.confidence == pytest.approx(conf.mean(), abs=1e-5)
    if min(size) > 8:
        for other in ("nearest", "align_corners"):
            assert (ramp_truth(h, w, RAMP_SPEC.image_size, other)[0] != want).any(), other


def test_ramp_boundaries_by_hand() -> None:
    """37 x 50 from a 4 x 5 grid: class 0 (column ramp) beats 2.9 where (x + 0.5) * 5 / 50 - 0.5
    > 2.9, i.e. from column 34 on (nearest: from 30, align_corners=True: from 36); in the top
    row (row ramp 0.37 + clip((y + 0.5) * 4 / 37 - 0.5, 0, 3)) classes 0 and 2 are the only ones."""
    (p,) = predict(RampLogits((4, 5)), [np.zeros((37, 50, 3), np.uint8)], RAMP_SPEC)
    assert p.mask[0].tolist() == [2] * 34 + [0] * 16
    # bottom row: class 1 = 3.37 beats 2.9 and the column ramp until that exceeds 3.37, i.e.
    # (x + 0.5) / 10 - 0.5 > 3.37 from x = 38.2 on -> column 39
    assert p.mask[-1].tolist() == [1] * 39 + [0] * 11
    # left column: class 1 beats 2.9 where (y + 0.5) * 4 / 37 - 0.5 + 0.37 > 2.9, y > 27.51 -> 28
    assert p.mask[:, 0].tolist() == [2] * 28 + [1] * 9


def test_spec_dict_round_trips_through_json(spec: ModelSpec) -> None:
    """The dict stored with every model: colours and size as lists (what JSON gives back), and
    `from_dict` of its JSON round trip is the spec (colours in class order)."""
    import json

    d = spec.to_dict()
    assert d["colors"] == [list(c) for c in spec.colors] == json.loads(json.dumps(d))["colors"]
    assert d["image_size"] == list(spec.image_size)
    assert ModelSpec.from_dict(json.loads(json.dumps(d))) == spec


def test_overlay_defaults_to_half_and_checks_its_inputs() -> None:
    colors = [(255, 0, 0), (0, 0, 200)]
    image = np.array([[[100, 50, 200], [10, 20, 30]]], np.uint8)
    mask = np.array([[0, 1]], np.uint8)
    assert overlay(image, mask, colors).tolist() == [[[178, 25, 100], [5, 10, 115]]]
    with pytest.raises(ValueError, match=r"^image \(1, 2\) and mask \(1, 3\) differ in size$"):
        overlay(image, np.zeros((1, 3), np.uint8), colors)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^alpha must be in \[0, 1\], got {alpha}$"):
            overlay(image, mask, colors, alpha)


def test_png_is_lossless_and_written_at_zlib_level_1() -> None:
    """Masks and overlays decode to their pixels; the zlib header of the image data says
    'fastest' (level 1: the serving hot path trades bytes for CPU, see `encode_png`)."""
    import io
    import struct
    import zlib

    from PIL import Image

    from roadseg.inference.render import encode_png

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 14, (30, 40), dtype=np.uint8),
              rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
              rng.integers(0, 256, (7, 5, 4), dtype=np.uint8),
              rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
              rng.integers(0, 256, (9, 1), dtype=np.uint8)]  # fmt: skip
    modes = {2: "L", 3: "RGB", 4: "RGBA"}
    for array, photo in [(a, p) for a in arrays for p in (False, True)]:
        data = encode_png(array, photo=photo)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.mode == modes[2 if array.ndim == 2 else array.shape[2]]
        assert np.array_equal(np.asarray(decoded), array), (array.shape, photo)
        pos = 8  # after the signature: chunks of length, type, data, CRC
        while data[pos + 4 : pos + 8] != b"IDAT":
            pos += 12 + struct.unpack(">I", data[pos : pos + 4])[0]
        cmf, flg = data[pos + 8], data[pos + 9]
        assert cmf & 0x0F == 8 and flg >> 6 == 0  # deflate, FLEVEL 0 = fastest
        h, w = array.shape[:2]
        channels = 1 if array.ndim == 2 else array.shape[2]
        # IHDR: size, 8 bits, colour type, deflate, filter method 0, no interlace
        ihdr = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2, 4: 6}[channels], 0, 0, 0)
        assert data[8:29] == struct.pack(">I", 13) + b"IHDR" + ihdr
        assert data[29:33] == struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        size = struct.unpack(">I", data[pos : pos + 4])[0]
        rows = zlib.decompress(data[pos + 8 : pos + 8 + size])
        assert len(rows) == h * (1 + w * channels)
        assert set(rows[:: 1 + w * channels]) == {1 if photo else 0}  # Sub for photos, else None
        assert data[pos + 12 + size :] == b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the end, whole
    assert encode_png(arrays[0]) == encode_png(arrays[0], photo=False)  # masks: unfiltered
    wide = rng.integers(0, 256, (5, 6, 3)).astype(np.int64)  # any integer array of 0-255 values
    for photo in (False, True):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(wide, photo=photo))))
        assert np.array_equal(decoded, wide)
    for bad in (np.zeros((0, 4), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(ValueError, match="encode_png needs"):
            encode_png(bad)


def test_overlay_table_equals_the_float_blend_for_every_value_and_class() -> None:
    """The looked-up overlay is byte for byte the float formula (1 - a) x + a c as it was computed
    before the table (image term in float32), rounded half to even, for every pixel value, class
    (with and without a colour) and several alphas."""
    rng = np.random.default_rng(3)
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(14)]
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], np.roll(values, 77)], axis=1)[None].repeat(16, 0)
    mask = np.repeat(np.arange(16, dtype=np.uint8)[:, None], 256, 1)
    mask[15] = 255  # ignore: no colour, blended with black
    for alpha in (0.0, 0.25, 0.3, 0.5, 0.7, 1.0):
        palette = np.zeros((256, 3))
        palette[:14] = colors
        want = (1.0 - alpha) * image.astype(np.float32) + alpha * palette[mask]
        got = overlay(image, mask, colors, alpha)
        assert np.array_equal(got, np.rint(want).astype(np.uint8)), alpha


def test_spec_from_params_carries_every_field() -> None:
    from roadseg.config import load_params

    p = load_params(overrides=["data.dataset=kitti_road", "model.kitti_name=baseline",
                               "model.base_channels=8", "train.image_size=[40,72]"])  # fmt: skip
    spec = ModelSpec.from_params(p, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), loss="iou")
    assert (spec.model_name, spec.base_channels, spec.image_size) == ("baseline", 8, (40, 72))
    assert (spec.dataset, spec.ignore_index, spec.extra) == ("kitti_road", 255, {"loss": "iou"})
    assert spec.class_names == ("not road", "road") and spec.num_classes == 2
    assert (spec.mean, spec.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    other = load_params(overrides=["data.ignore_index=250", "data.mapping.16=250"])
    assert ModelSpec.from_params(other, mean=(0.5,) * 3, std=(0.2,) * 3).ignore_index == 250


def test_check_image_makes_grey_rgb_and_names_a_wrong_type() -> None:
    from roadseg.data.transforms import check_image

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = check_image(grey)
    assert rgb.shape == (3, 4, 3) and all((rgb[:, :, c] == grey).all() for c in range(3))
    with pytest.raises(ValueError, match=r"^image must be a numpy array, got list$"):
        check_image([[0, 1]])


def test_colorize_gives_uint8_rgb() -> None:
    out = colorize(np.array([[0, 1, 200]], np.uint8), [(255, 0, 0), (0, 0, 200)])
    assert out.dtype == np.uint8 and out.tolist() == [[[255, 0, 0], [0, 0, 200], [0, 0, 0]]]


def test_resize_image_is_half_pixel_bilinear_and_a_no_op_at_its_size() -> None:
    """[0, 255] to 4 columns: output centres at 0.25, 0.75, 1.25, 1.75 input pixels, i.e. 0,
    0.25 * 255 = 63.75, 0.75 * 255 = 191.25 and 255 by linear interpolation (clamped at the
    edges): 0, 64, 191, 255. Bicubic (PIL's default) would overshoot to other values."""
    image = np.repeat(np.array([[0, 255]], np.uint8)[:, :, None], 3, axis=2)
    assert resize_image(image, (1, 4))[0, :, 0].tolist() == [0, 64, 191, 255]
    assert resize_image(image, (1, 2)) is image


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_names": ("a", "b")}, r"^ModelSpec: 3 classes but 2 names and 3 colours$"),
        ({"image_size": (5,)}, r"^ModelSpec: image_size must be \(H, W\) > 0, got \(5,\)$"),
        ({"image_size": (0, 5)}, r"^ModelSpec: image_size must be \(H, W\) > 0, got \(0, 5\)$"),
        ({"mean": (0.5, 0.5)}, r"^ModelSpec: mean and std need one value per input channel$"),
        ({"std": (0.5, 0.0, 0.5)}, r"^ModelSpec: std must be positive, got \(0.5, 0.0, 0.5\)$"),
    ],
)
def test_spec_checks_name_what_is_wrong(change: dict, message: str) -> None:
    import dataclasses

    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RAMP_SPEC, **change)
    assert dataclasses.replace(RAMP_SPEC, image_size=(1, 5)).image_size == (1, 5)  # 1 is valid


def test_preprocess_of_nothing_says_so() -> None:
    with pytest.raises(ValueError, match=r"^preprocess needs at least one image$"):
        preprocess([], RAMP_SPEC)


def test_alpha_channels_are_dropped_and_empty_images_refused() -> None:
    from roadseg.data.transforms import check_image

    rgba = np.dstack([RGB[layout(6, 9)], np.full((6, 9), 7, np.uint8)])
    assert np.array_equal(check_image(rgba), RGB[layout(6, 9)])
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    blend = overlay(rgba, layout(6, 9), colors, 0.3)
    assert blend.dtype == np.uint8 and np.array_equal(
        blend, overlay(rgba[:, :, :3], layout(6, 9), colors, 0.3)
    )
    with pytest.raises(ValueError, match=r"^image is empty: shape \(0, 5, 3\)$"):
        check_image(np.zeros((0, 5, 3), np.uint8))
