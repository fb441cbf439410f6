"""`train.compile: true` (torch.compile, inductor) gives what eager mode gives, on the CPU.

Inductor generates C++ for the CPU and needs a C++ compiler; without one these tests skip saying
so. Compilation takes tens of seconds on a small machine, hence `slow`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roadseg.config import load_params
from roadseg.inference.predict import predict
from roadseg.models.io import load_checkpoint
from roadseg.train.loop import train_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inductor() -> None:
    """Skip (with the reason) where torch.compile cannot build CPU kernels."""
    try:
        torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.ones(4))
    except Exception as e:  # no C++ compiler, unsupported Python, ...
        pytest.skip(f"torch.compile cannot run on this CPU machine: {type(e).__name__}: {e}")


def test_compiled_model_predicts_what_eager_predicts(inductor) -> None:
    from roadseg.testing import random_unet

    torch._dynamo.reset()
    model, spec = random_unet(base_channels=4, seed=1)
    with torch.no_grad():
        for p in model.parameters():  # random_unet's x3 weights make logits ~1e11 from
            p.div_(3.0)  # cancelling terms; back to a well-conditioned network
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 160), (61, 97))]
    x = torch.randn(2, 3, *spec.image_size, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    for eager, comp in zip(predict(model, images, spec), predict(compiled, images, spec),
                           strict=True):  # fmt: skip
        assert (eager.mask == comp.mask).mean() > 0.999
        assert comp.confidence == pytest.approx(eager.confidence, abs=1e-5)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadseg.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("compile-data")
    synthesize_dataset(out, train=4, val=2, test=0, height=40, width=56, seed=2)
    return out


def test_training_with_compile_matches_eager(inductor, tiny_data: Path, tmp_path: Path) -> None:
    """Same seed, same data: losses per epoch, validation scores and final weights agree."""
    results = {}
    for flag in ("false", "true"):
        torch._dynamo.reset()
        params = load_params(None, [
            "data.num_workers=0", "model.base_channels=4", "train.image_size=[32,48]",
            "train.batch_size=2", "train.epochs=2", "train.sample_every=5",
            f"train.checkpoint_dir={tmp_path / flag}", f"train.compile={flag}",
            # No photometric jitter: its blurred and contrast-stretched inputs leave some weights
            # with near-zero gradients, whose Adam steps (about lr each) take their sign from
            # float noise, so compiled and eager weights part by up to lr x steps (7e-3 seen);
            # eager against eager stays bit-identical either way.
            "augment.brightness=0", "augment.contrast=0", "augment.saturation=0",
            "augment.hue=0", "augment.blur_prob=0",
        ])  # fmt: skip
        results[flag] = train_model(params, tiny_data, tracking_uri=None, progress=False)
    eager, compiled = results["false"], results["true"]
    assert compiled.epochs_run == eager.epochs_run == 2
    for e, c in zip(eager.history, compiled.history, strict=True):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-3)
        assert c["val_miou"] == pytest.approx(e["val_miou"], abs=1e-3)
    a = load_checkpoint(tmp_path / "false/last.pt")["model"]
    b = load_checkpoint(tmp_path / "true/last.pt")["model"]
    assert a.keys() == b.keys()  # the compiled wrapper's prefix never reaches the checkpoint
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
