"""The serve benchmark's helpers that decide what its figures mean.

`parse_backend` turns `name[:threads][@workers]` into the service's settings, and `service_pid`
names the process whose tree is measured for "peak RSS (all processes)". The RSS figure once
counted one worker only (psutil names one holder of the shared socket, not the manager above it);
these tests build that tree (a process named circusd, a child holding the listening socket) and
check the manager is found and its tree counted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

psutil = pytest.importorskip("psutil")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import serve_throughput

    return serve_throughput


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("torch", ("torch", None, None)),
        ("onnxruntime:1", ("onnxruntime", "1", None)),
        ("torch@2", ("torch", None, "2")),
        ("onnxruntime:1@2", ("onnxruntime", "1", "2")),
        ("onnxruntime_int8", ("onnxruntime_int8", None, None)),
    ],
)
def test_parse_backend(bench, spec, want):
    assert bench.parse_backend(spec) == want


# A parent that starts a child holding a listening socket (as circusd starts a worker that
# inherits the service's socket), prints the port and waits.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.argv[1], "-c", '''
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
big = bytearray(64 * 2**20)  # 64 MiB the tree's RSS must count
for i in range(0, len(big), 4096): big[i] = 1
time.sleep(60)
'''], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
child.wait()
"""


def _start(tmp_path: Path, name: str) -> tuple[subprocess.Popen, int]:
    exe = tmp_path / name
    exe.symlink_to(sys.executable)  # the process's name is the name it was started by
    proc = subprocess.Popen([str(exe), "-c", PARENT, sys.executable], stdout=subprocess.PIPE, text=True)  # fmt: skip
    port = int(proc.stdout.readline())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the child's 64 MiB written
        kids = psutil.Process(proc.pid).children()
        if kids and kids[0].memory_info().rss > 60 * 2**20:
            break
        time.sleep(0.05)
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def test_service_pid_climbs_from_the_socket_holder_to_circusd(bench, tmp_path):
    proc, port = _start(tmp_path, "circusd")
    try:
        holder = psutil.Process(proc.pid).children()[0]
        assert holder.pid != proc.pid
        assert bench.service_pid(f"http://127.0.0.1:{port}") == proc.pid
        # the manager's tree holds the worker's memory; the worker alone would miss the manager's
        tree = bench.tree_rss(proc.pid)
        assert tree >= holder.memory_info().rss + psutil.Process(proc.pid).memory_info().rss
        assert tree > bench.tree_rss(holder.pid)
    finally:
        _stop(proc)


def test_service_pid_without_circusd_says_so(bench, tmp_path):
    proc, port = _start(tmp_path, "not-circusd")
    try:
        with pytest.raises(RuntimeError, match="no circusd above pid"):
            bench.service_pid(f"http://127.0.0.1:{port}")
    finally:
        _stop(proc)
