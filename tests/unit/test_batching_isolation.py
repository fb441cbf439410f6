"""The batching queue: one failing image fails only its own request; cancelled work is skipped;
batches are filled round robin, so a large request cannot starve a small one."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np
import pytest
import torch

from roadseg.models.spec import ModelSpec
from roadseg.serve.engine import InferenceEngine

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
    """Images of a request cancelled while it waits in the queue (its client hung up) never
    reach the model; the requests around it are answered."""
    model = Sleepy()
    engine = InferenceEngine(model, SPEC, {}, max_batch_size=8, max_wait_ms=1)

    async def run():
        first = asyncio.create_task(engine.predict([image(GOOD)]))
        while not model.seen:  # the first batch is in the model
            await asyncio.sleep(0.001)
        gone = asyncio.create_task(engine.predict([image(MARKED)] * 3))
        keep = asyncio.create_task(engine.predict([image(GOOD)]))
        while len(engine._requests) < 2:  # both queued behind the running batch
            await asyncio.sleep(0.001)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await first, await keep

    (p1,), (p2,) = asyncio.run(run())
    assert p1.mask.shape == p2.mask.shape == (3, 5)
    seen = [v for batch in model.seen for v in batch]
    assert seen == [pytest.approx(-5.0)] * 2  # only the two kept images reached the model


class Sleepy(Probe):
    """The probe, taking 200 ms per batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        time.sleep(0.2)
        return out


class Slow(Probe):
    """The probe, taking 2 ms per batch (a model's forward pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return super().forward(x)


def test_a_large_request_does_not_starve_a_single_image():
    """A single image submitted while a 200-image request is being served rides in one of the
    next two batches (round robin), so it is answered long before the large request."""
    model = Slow()
    engine = InferenceEngine(model, SPEC, {}, max_batch_size=8, max_wait_ms=1)
    done: dict[str, float] = {}
    results: dict[str, list] = {}

    async def timed(name: str, images: list) -> None:
        results[name] = await engine.predict(images)
        done[name] = time.perf_counter()

    async def run() -> int:
        big = asyncio.create_task(timed("big", [image(GOOD)] * 200))
        while len(model.seen) < 2:  # the big request is being served
            await asyncio.sleep(0.001)
        submitted_at = len(model.seen)
        await timed("single", [image(MARKED)])
        await big
        return submitted_at

    submitted_at = asyncio.run(run())
    single_batch = next(i for i, b in enumerate(model.seen) if max(b) > -1)
    assert single_batch <= submitted_at + 1  # the batch running then, or the next one
    assert len(model.seen) == 200 // 8 + 1  # 8 per batch, one of them shared with the single
    assert done["single"] < done["big"]
    rest = [v for b in model.seen[single_batch + 1 :] for v in b]
    assert len(rest) > 150  # most of the big request was still to come
    # each request gets its own answers back from the shared batches: red above the mean is class 1
    assert [p.mask.tolist() for p in results["single"]] == [[[1] * 5] * 3]
    assert len(results["big"]) == 200
    assert all(p.mask.tolist() == [[0] * 5] * 3 for p in results["big"])


def test_round_robin_interleaves_requests_and_skips_cancelled():
    engine = InferenceEngine(Probe(), SPEC, {}, max_batch_size=4)

    async def run():
        engine._ensure_worker()
        loop = asyncio.get_running_loop()
        a = [loop.create_future() for _ in range(3)]
        b = [loop.create_future() for _ in range(2)]
        c = [loop.create_future()]
        for futs, tag in ((a, "a"), (b, "b"), (c, "c")):
            engine._requests.append(deque((f"{tag}{i}", f) for i, f in enumerate(futs)))
        b[0].cancel()
        first = [im for im, _ in engine._take(4)]
        second = [im for im, _ in engine._take(4)]
        engine._worker.cancel()
        return first, second

    first, second = asyncio.run(run())
    assert first == ["a0", "b1", "c0", "a1"]
    assert second == ["a2"]


def test_the_inference_thread_runs_only_the_network(monkeypatch):
    """Resizing and the full-resolution masks run in the request's worker threads, beside the
    next forward pass; the model's thread does the forward pass alone, and the answers are
    still `roadseg.inference.predict.predict`'s."""
    import threading

    import roadseg.serve.engine as batching
    from roadseg.inference.predict import predict

    threads: dict[str, set[str]] = {"prepare": set(), "postprocess": set(), "forward": set()}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            threads[name].add(threading.current_thread().name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(batching, "prepare", spy("prepare", batching.prepare))
    monkeypatch.setattr(batching, "postprocess", spy("postprocess", batching.postprocess))
    model = Probe()
    model.forward = spy("forward", model.forward)
    engine = InferenceEngine(model, SPEC, {}, max_batch_size=4)
    images = [image(GOOD), image(MARKED), np.full((7, 2, 3), 200, np.uint8)]

    async def run():
        return await engine.predict(images)

    preds = asyncio.run(run())
    assert {t.split("_")[0] for t in threads["forward"]} == {"roadseg-infer"}
    assert threads["prepare"] and not any(t.startswith("roadseg-infer") for t in threads["prepare"])
    assert threads["postprocess"]
    assert not any(t.startswith("roadseg-infer") for t in threads["postprocess"])
    expected = predict(Probe(), images, SPEC)
    assert [p.mask.tolist() for p in preds] == [p.mask.tolist() for p in expected]
    assert [p.mask.tolist() for p in preds][2] == [[1] * 2] * 7  # red above the mean: class 1


def test_a_failing_after_hook_does_not_fail_the_request(caplog):
    engine = InferenceEngine(Probe(), SPEC, {}, max_batch_size=4)

    def broken(images, preds):
        raise RuntimeError("monitoring broke")

    async def run():
        return await engine.predict([image(MARKED)], then=broken)

    (pred,) = asyncio.run(run())
    assert pred.mask.tolist() == [[1] * 5] * 3
    assert "after-prediction hook failed" in caplog.text


def test_the_batch_wait_is_only_for_requests_on_their_way():
    """With a minute-long batch wait: a lone request runs at once (nobody else is resizing,
    so nobody is coming), while requests submitted together still share one batch."""
    model = Probe()
    engine = InferenceEngine(model, SPEC, {}, max_batch_size=8, max_wait_ms=60_000)

    async def run():
        alone = await asyncio.wait_for(engine.predict([image(GOOD)]), 20)
        together = await asyncio.wait_for(
            asyncio.gather(engine.predict([image(GOOD)]), engine.predict([image(MARKED)])), 20
        )
        return alone, together

    alone, (a, b) = asyncio.run(run())
    assert [len(batch) for batch in model.seen] == [1, 2]
    assert alone[0].mask.tolist() == a[0].mask.tolist() == [[0] * 5] * 3
    assert b[0].mask.tolist() == [[1] * 5] * 3


class Stalling(Probe):
    """A forward pass that takes a while, so the worker can stop in the middle of one."""

    started = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.started += 1
        time.sleep(0.3)
        return super().forward(x)


def test_a_stopped_worker_fails_its_batch_and_queue_with_retry_never_a_hang():
    """The batching worker stops mid-batch (shutdown, or it died): the request in its batch and
    the requests queued behind it get EngineUnavailable at once (the service answers 503 with
    Retry-After); a later request starts a new worker and is served."""
    from roadseg.serve.engine import EngineUnavailable

    engine = InferenceEngine(Stalling(), SPEC, {}, max_batch_size=1, max_wait_ms=0)

    async def run():
        first = asyncio.ensure_future(engine.predict([image(GOOD)]))
        queued = asyncio.ensure_future(engine.predict([image(MARKED)]))
        while not engine.model.started:  # the first batch is in the forward pass
            await asyncio.sleep(0.01)
        engine._worker.cancel()
        outcome = await asyncio.wait_for(asyncio.gather(first, queued, return_exceptions=True), 2)
        again = await asyncio.wait_for(engine.predict([image(MARKED)]), 5)
        return outcome, again

    (first, queued), again = asyncio.run(run())
    assert isinstance(first, EngineUnavailable) and isinstance(queued, EngineUnavailable)
    assert again[0].mask.shape == (3, 5) and (again[0].mask == 1).all()


def test_the_service_answers_a_stopped_worker_with_503_and_retry_after():
    from roadseg.serve.api import ServingState
    from roadseg.serve.engine import EngineUnavailable
    from roadseg.serve.errors import error_response

    class Stopped:
        ready = True

        async def predict(self, images, then=None):
            raise EngineUnavailable("the model worker stopped; retry the request")

    state = ServingState(engine=Stopped())
    with pytest.raises(Exception) as raised:
        asyncio.run(state.infer([image(GOOD)]))
    response = error_response(raised.value)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert b'"error":"unavailable"' in response.body and b"retry" in response.body
