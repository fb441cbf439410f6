"""The batching queue: one failing image fails only its own request; cancelled work is skipped."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from roadseg.batching import InferenceEngine
from roadseg.serving import ModelSpec

SPEC = ModelSpec(
    model_name="probe",
    num_classes=2,
    in_channels=3,
    base_channels=1,
    image_size=(4, 4),
    mean=(0.5,) * 3,
    std=(0.1,) * 3,
    class_names=("other", "road"),
    colors=((0, 0, 0),) * 2,
)
POISON, GOOD, MARKED = 255, 0, 128  # pixel values; normalised red: 5.0, -5.0, ~0.02


class Probe(torch.nn.Module):
    """Class 1 wins where red is above the mean; raises on a batch holding a poison image.
    Records the first pixel of every image it sees, batch by batch."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:, 0, 0, 0].tolist())
        if (x[:, 0, 0, 0] > 3).any():
            raise RuntimeError("poisoned batch")
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], dim=1)


def image(value: int) -> np.ndarray:
    return np.full((3, 5, 3), value, np.uint8)


def test_one_bad_image_fails_only_its_request():
    model = Probe()
    engine = InferenceEngine(model, SPEC, {}, max_batch_size=8, max_wait_ms=50)

    async def run():
        return await asyncio.gather(
            engine.predict([image(GOOD)]),
            engine.predict([image(POISON)]),
            engine.predict([image(GOOD), image(MARKED)]),
            return_exceptions=True,
        )

    ok1, bad, ok2 = asyncio.run(run())
    assert isinstance(bad, RuntimeError) and "poisoned" in str(bad)
    assert ok1[0].mask.tolist() == [[0] * 5] * 3  # red below the mean: class 0
    assert [p.mask.tolist() for p in ok2] == [[[0] * 5] * 3, [[1] * 5] * 3]
    assert len(model.seen[0]) == 4  # tried as one batch first, then image by image
    assert [len(b) for b in model.seen[1:]] == [1, 1, 1, 1]


def test_cancelled_request_is_never_computed():
    model = Probe()
    engine = InferenceEngine(model, SPEC, {}, max_batch_size=8, max_wait_ms=100)

    async def run():
        keep = asyncio.create_task(engine.predict([image(GOOD)]))
        gone = asyncio.create_task(engine.predict([image(MARKED)] * 3))
        await asyncio.sleep(0.01)  # both queued; the worker is still collecting its batch
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await keep

    (pred,) = asyncio.run(run())
    assert pred.mask.shape == (3, 5)
    seen = [v for batch in model.seen for v in batch]
    assert seen == [pytest.approx(-5.0)]  # only the kept image reached the model
