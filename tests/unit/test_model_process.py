"""The network in a child process (`roadseg/serve/modelproc.py`): the child answers the logits the
model gives in this process; its death mid-batch fails only that batch's requests, with
`EngineUnavailable` (503 + Retry-After), and the next batch restarts it; a child that cannot
start says why; closing leaves no process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from roadseg.serve.engine import EngineUnavailable, InferenceEngine
from roadseg.serve.modelproc import (
    ERROR,
    FORWARD,
    ModelProcess,
    ModelWorkerDied,
    read_frame,
    write_array,
    write_text,
)
from roadseg.testing import random_unet


@pytest.fixture(scope="module")
def unet():
    return random_unet(base_channels=4, seed=0)


@pytest.fixture()
def child(unet):
    model, spec = unet
    proc = ModelProcess.start(model, spec)
    yield proc
    proc.close()


def test_frames_round_trip_arrays_and_text():
    buf = io.BytesIO()
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
    write_array(buf, FORWARD, a)
    write_text(buf, ERROR, "bad input ü")
    buf.seek(0)
    kind, got = read_frame(buf)
    assert kind == FORWARD and got.shape == (2, 3, 4) and np.array_equal(got, a)
    assert read_frame(buf) == (ERROR, "bad input ü")
    assert read_frame(buf) is None  # end of file
    torn = io.BytesIO(buf.getvalue()[:20])  # a frame cut short is end of file, never garbage
    assert read_frame(torn) is None


def test_the_child_answers_the_logits_of_the_model_here(unet, child):
    model, _ = unet
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 3, 48, 64)).astype(np.float32))
    with torch.inference_mode():
        want = model.eval()(x)
    got = child(x)
    assert got.shape == want.shape
    # the same weights in the same order: a transposed or mirrored answer would be far off
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert child.pid != os.getpid() and child.restarts == 0


def test_an_error_in_one_batch_keeps_the_child(child):
    pid = child.pid
    with pytest.raises(RuntimeError, match="channels"):
        child(torch.zeros(1, 5, 16, 16))  # five channels for a three-channel network
    assert child(torch.zeros(1, 3, 16, 16)).shape[1] == 14
    assert child.pid == pid and child.restarts == 0


def test_a_killed_child_fails_its_batch_and_the_next_one_restarts_it(unet, child):
    model, spec = unet
    engine = InferenceEngine(child, spec, {"version": "7"}, max_batch_size=4)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    reference = InferenceEngine(model, spec, {}).predict_now(images)

    async def run():
        before = await engine.predict(images[:1])
        # Mid-batch: the child is stopped, the batch goes in, then the child is killed.
        os.kill(child.pid, signal.SIGSTOP)
        batch = asyncio.gather(
            engine.predict(images[:2]), engine.predict(images[2:]), return_exceptions=True
        )
        killer = asyncio.get_running_loop().call_later(0.5, os.kill, child.pid, signal.SIGKILL)
        died = await batch
        killer.cancel()
        after = await engine.predict(images)
        await engine.close()
        return before, died, after

    old = child.pid
    before, died, after = asyncio.run(run())
    assert np.array_equal(before[0].mask, reference[0].mask)
    # every request that was in the dead process's batch: retry later, not a wrong answer
    assert all(isinstance(d, EngineUnavailable) for d in died), died
    assert "retry" in str(died[0]) and str(old) in str(died[0])
    assert child.restarts == 1
    assert [p.mask.tolist() for p in after] == [p.mask.tolist() for p in reference]


def test_a_child_that_cannot_start_says_why(tmp_path):
    argv = [sys.executable, "-m", "roadseg.serve.modelproc", str(tmp_path / "missing.pt")]
    with pytest.raises(ModelWorkerDied, match=r"failed to start: .*checkpoint not found"):
        ModelProcess(tmp_path, argv)


def test_close_ends_the_child(unet):
    model, spec = unet
    proc = ModelProcess.start(model, spec)
    popen: subprocess.Popen = proc.proc
    workdir = proc.workdir
    proc.close()
    assert popen.poll() is not None and not workdir.exists()
