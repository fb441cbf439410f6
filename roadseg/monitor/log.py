"""Monitoring log: the features of every served image, appended as JSONL for `roadseg drift`."""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MonitorLog:
    """Append-only JSONL log of monitoring features, one line per served image (no pixels).

    Chosen over `bentoml.monitor` because the drift job reads plain JSONL with pandas, with no
    BentoML monitoring plugin or collector in between, and the format is the same on a laptop and
    in a cluster (a shared volume at ROADSEG_MONITOR_DIR).
    Safe with several service workers: each write opens the file with O_APPEND and writes whole
    lines in one `os.write`, so lines never interleave. Rotation-safe: the file is opened per
    write, so after logrotate moves it the next write creates a fresh file; files are also split
    per UTC day (`features-YYYYMMDD.jsonl`).
    """

    def __init__(self, directory: str | Path, prefix: str = "features") -> None:
        self.directory = Path(directory)
        self.prefix = prefix

    def path_for(self, ts: float) -> Path:
        return self.directory / f"{self.prefix}-{time.strftime('%Y%m%d', time.gmtime(ts))}.jsonl"

    def write(self, records: Sequence[Mapping[str, Any]], *, model_version: str) -> Path:
        """Append one line per record, adding `timestamp` and `model_version`."""
        ts = time.time()
        lines = [
            json.dumps(
                {"timestamp": ts, "model_version": model_version, **r}, separators=(",", ":")
            )
            for r in records
        ]
        path = self.path_for(ts)
        if not lines:
            return path
        self.directory.mkdir(parents=True, exist_ok=True)
        data = ("\n".join(lines) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path


class BackgroundJobs:
    """Monitoring off the response path: one daemon worker thread and a small bounded queue.

    `submit` never blocks: when `maxsize` jobs are already waiting the job is dropped and counted
    (`dropped`, the Prometheus counter `roadseg_monitoring_dropped_total`, a warning per power of
    two), so a slow disk or a burst of traffic costs log rows, never latency or memory. A failing
    job is logged and forgotten. `flush` waits for the queue to drain (tests, shutdown). The
    worker starts on the first job, in the process that submits it (safe across forks).
    """

    def __init__(self, maxsize: int = 64, name: str = "roadseg-monitoring") -> None:
        self.maxsize, self.name = maxsize, name
        self.dropped = 0
        self._queue: queue.Queue | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._counter: Any = None  # created on the first drop

    def _ensure_worker(self) -> queue.Queue:
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                if self._queue is None:  # rows still queued at exit are written (up to 5 s)
                    atexit.register(self.flush, 5.0)
                self._queue, self._pid = queue.Queue(self.maxsize), os.getpid()
                threading.Thread(
                    target=self._run, args=(self._queue,), name=self.name, daemon=True
                ).start()
            return self._queue

    def submit(self, job: Callable[..., Any], *args: Any) -> bool:
        """Queue `job(*args)`; False (and counted) when the queue is full."""
        try:
            self._ensure_worker().put_nowait((job, args))
            return True
        except queue.Full:
            pass
        with self._lock:
            self.dropped += 1
            dropped = self.dropped
        self._count_dropped()
        if dropped & (dropped - 1) == 0:  # 1, 2, 4, 8...: visible, never a flood
            logger.warning("monitoring queue full: %d rows dropped so far", dropped)
        return False

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued job has run; False if `timeout` passed first."""
        q = self._queue
        if q is None or self._pid != os.getpid():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with q.all_tasks_done:
            while q.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                q.all_tasks_done.wait(left)
        return True

    def _count_dropped(self) -> None:
        """`roadseg_monitoring_dropped_total` on the service's /metrics (BentoML's registry)."""
        if self._counter is None:
            try:
                import bentoml

                self._counter = bentoml.metrics.Counter(
                    name="roadseg_monitoring_dropped_total",
                    documentation="Monitoring jobs dropped because the monitoring queue was full",
                )
            except Exception:  # no BentoML, or a registry that refuses: the log line still counts
                self._counter = _NoCounter()
        self._counter.inc()

    @staticmethod
    def _run(q: queue.Queue) -> None:
        while True:
            job, args = q.get()
            try:
                job(*args)
            except Exception:  # monitoring never takes the service down
                logger.exception("monitoring job failed")
            finally:
                q.task_done()


class _NoCounter:
    def inc(self) -> None:
        pass
