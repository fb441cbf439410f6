"""Models: output shapes for any input size, parameter counts, the factory's errors."""

from __future__ import annotations

import pytest
import torch

from roadseg.models import MODELS, PRETRAINED_NORMALIZATION, build_model, count_parameters
from roadseg.models.unet import pad_to_multiple


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine OpenMP barriers
    between oversubscribed threads made these forward passes ~100x slower (1.4 s vs 4 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [(37, 53), (64, 96), (17, 1), (1, 1), (33, 31)])
def test_output_matches_input_size(name: str, size: tuple[int, int]) -> None:
    model = build_model(name, in_channels=3, num_classes=5, base_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_in_channels_and_backward(name: str) -> None:
    channels = 3 if name in PRETRAINED_NORMALIZATION else 1  # an ImageNet encoder takes RGB
    model = build_model(name, in_channels=channels, num_classes=2, base_channels=4)
    x = torch.randn(2, channels, 37, 53, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_gives_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=3, base_channels=4).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("size", "padded"), [((37, 53), (48, 64)), ((48, 64), (48, 64)), ((1, 17), (16, 32))]
)
def test_pad_to_multiple_pads_bottom_right_with_zeros(
    size: tuple[int, int], padded: tuple[int, int]
) -> None:
    x = torch.randn(1, 2, *size)
    out, original = pad_to_multiple(x, 16)
    assert out.shape[-2:] == padded and original == size
    torch.testing.assert_close(out[..., : size[0], : size[1]], x)
    assert out.sum() == pytest.approx(x.sum().item(), abs=1e-4)


def test_unet_base64_is_the_31m_reference() -> None:
    model = build_model("unet", in_channels=3, num_classes=2, base_channels=64)
    assert count_parameters(model) == pytest.approx(31.04e6, rel=0.01)


def test_unet_width_scales_parameters_quadratically() -> None:
    n32 = count_parameters(build_model("unet", in_channels=3, num_classes=14, base_channels=32))
    n16 = count_parameters(build_model("unet", in_channels=3, num_classes=14, base_channels=16))
    assert n32 / n16 == pytest.approx(4.0, rel=0.02)


def test_baseline_is_much_smaller_than_unet() -> None:
    base = count_parameters(
        build_model("baseline", in_channels=3, num_classes=14, base_channels=16)
    )
    unet = count_parameters(build_model("unet", in_channels=3, num_classes=14, base_channels=16))
    assert base < unet / 5


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'segformer'.*baseline, unet"):
        build_model("segformer", in_channels=3, num_classes=2, base_channels=8)


@pytest.mark.parametrize("arg", ["in_channels", "num_classes", "base_channels"])
def test_non_positive_sizes_are_rejected(arg: str) -> None:
    kwargs = {"in_channels": 3, "num_classes": 2, "base_channels": 8, arg: 0}
    with pytest.raises(ValueError, match=arg):
        build_model("unet", **kwargs)
