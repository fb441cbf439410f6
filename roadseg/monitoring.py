"""Monitoring log: the features of every served image, appended as JSONL for `roadseg drift`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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
