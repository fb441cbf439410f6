"""Monitoring off the response path: `BackgroundJobs` never blocks, drops and counts when full."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from roadseg.inference.predict import Prediction
from roadseg.monitor.log import BackgroundJobs, MonitorLog
from roadseg.serve.api import ServingState, record_features


def test_full_queue_drops_and_counts_without_blocking() -> None:
    jobs, gate, started, done = BackgroundJobs(maxsize=2), threading.Event(), threading.Event(), []

    def hold() -> None:
        started.set()
        gate.wait()

    assert jobs.submit(hold)  # the worker holds this one until the gate opens
    assert started.wait(10)  # taken off the queue: two free places are left
    start = time.perf_counter()
    accepted = [jobs.submit(done.append, i) for i in range(5)]
    assert time.perf_counter() - start < 5  # a blocking submit would wait for the gate forever
    assert accepted == [True, True, False, False, False] and jobs.dropped == 3
    assert not jobs.flush(timeout=0.05)  # still held by the gate
    gate.set()
    assert jobs.flush() and done == [0, 1]


def test_failing_job_is_logged_and_the_worker_goes_on(caplog) -> None:
    jobs, done = BackgroundJobs(), []
    jobs.submit(lambda: 1 / 0)
    jobs.submit(done.append, "after")
    assert jobs.flush() and done == ["after"]
    assert "monitoring job failed" in caplog.text


def test_rows_are_written_in_the_background_and_flushed(tmp_path) -> None:
    state = ServingState(monitor=MonitorLog(tmp_path))
    images = [np.full((720, 1280, 3), 90, np.uint8), np.zeros((2, 2, 3), np.uint8)]
    preds = [Prediction(np.zeros(im.shape[:2], np.uint8), 0.7, {"road": 1.0}) for im in images]
    record_features(state, images, preds)  # the 2x2 image is skipped (too small), never raised
    assert state.flush()
    (path,) = tmp_path.glob("*.jsonl")
    (row,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert row["width"] == 1280 and row["share_road"] == 1.0 and row["confidence"] == 0.7
    assert row["brightness"] == 90 / 255 and row["model_version"] == "unloaded"
