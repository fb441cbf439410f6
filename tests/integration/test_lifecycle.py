"""The service's life cycle, live: `roadseg serve` with a model it cannot serve exits 1 within a
minute with one line saying why (no worker restart loop); SIGTERM mid-request lets the request
finish, flushes the monitoring log and leaves no process behind; SIGKILL of the manager takes its
workers along."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from roadseg.testing import free_port, params_with, save_random_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _serve(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "roadseg.cli", "serve", *args],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: the test can always clean up after it
    )


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _cleanup(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.parametrize(
    "uri, cause",
    [
        ("models:/roadseg-unet@champion", "roadseg-unet"),  # nothing registered in this store
        ("corrupt.pt", "not a readable checkpoint"),
        ("missing.pt", "checkpoint not found"),
    ],
)
def test_a_model_that_cannot_be_served_exits_1_with_one_line(
    tmp_path: Path, uri: str, cause: str
) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    target = uri if uri.startswith("models:/") else str(tmp_path / uri)
    log = tmp_path / "serve.log"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}", "BENTOML_HOME": str(tmp_path / "bentoml"),
           "ROADSEG_TERMINATION_LOG": str(tmp_path / "termination-log")}  # fmt: skip
    start = time.monotonic()
    proc = _serve(["--model-uri", target, "--port", str(free_port())], env, log)
    try:
        code = proc.wait(60)
    finally:
        _cleanup(proc)
    last = _last_line(log)
    assert code == 1, log.read_text()[-2000:]
    assert time.monotonic() - start < 60
    assert last.startswith(f"roadseg: cannot serve {target}: ") and cause in last, last
    assert (tmp_path / "termination-log").read_text().strip() == last  # kubectl describe pod
    assert log.read_text().count("Traceback") == 0, "one line, not a traceback"


def test_an_unknown_backend_exits_1_with_one_line(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    save_random_checkpoint(ckpt, base_channels=4, seed=0)
    log = tmp_path / "serve.log"
    env = {"ROADSEG_BACKEND": "tensorrt", "BENTOML_HOME": str(tmp_path / "bentoml"),
           "ROADSEG_TERMINATION_LOG": str(tmp_path / "termination-log")}  # fmt: skip
    proc = _serve(["--model-uri", str(ckpt), "--port", str(free_port())], env, log)
    try:
        assert proc.wait(60) == 1
    finally:
        _cleanup(proc)
    assert _last_line(log) == (
        f"roadseg: cannot serve {ckpt}: ROADSEG_BACKEND='tensorrt' is not one of torch, onnxruntime, onnxruntime_int8"
    )


@pytest.fixture()
def served(tmp_path: Path, request: pytest.FixtureRequest):
    ckpt = tmp_path / "model.pt"
    save_random_checkpoint(ckpt, base_channels=4, seed=0)
    port = free_port()
    log = tmp_path / "serve.log"
    args = ["--model-uri", str(ckpt), "--port", str(port)]
    edits = getattr(request, "param", None)  # params.yaml edits for this service
    if edits:
        args += ["--params", str(params_with(tmp_path / "params.yaml", edits))]
    env = {
        "ROADSEG_MONITOR_DIR": str(tmp_path / "monitoring"),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    proc = _serve(args, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("service not ready: " + log.read_text()[-3000:])
        yield proc, port, tmp_path
    finally:
        _cleanup(proc)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_sigterm_mid_request_answers_it_flushes_and_leaves_nothing(served) -> None:
    proc, port, tmp = served
    workers = _descendants(proc.pid)
    assert workers, "the manager has its workers"
    image = png_bytes(np.random.default_rng(3).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    head = (f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(image)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + image[:100])  # the request is in flight: half its body sent
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        s.sendall(image[100:])
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < 200:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"image/png" in answer.split(b"\r\n\r\n")[0]
    assert proc.wait(60) == 0
    time.sleep(1.0)
    assert _alive(workers) == [], "no process of the server survives it"
    rows = [
        json.loads(line)
        for f in (tmp / "monitoring").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(rows) == 1 and rows[0]["width"] == 80 and rows[0]["height"] == 48


def test_sigkill_of_the_manager_takes_its_workers(served) -> None:
    proc, _, _ = served
    workers = _descendants(proc.pid)
    assert workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 20
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(workers) == []


def test_sigterm_closes_an_open_stream_with_going_away(served) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    proc, port, _ = served
    with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=10) as ws:
        ws.send(png_bytes(np.zeros((32, 48, 3), dtype=np.uint8)))
        ws.recv(timeout=30)  # the stream works: one answer
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert proc.wait(60) == 0


@pytest.mark.parametrize(
    "served", [{"max_inflight_bytes: 134217728": "max_inflight_bytes: 3000000"}], indirect=True
)
def test_busy_answers_are_json_over_a_real_socket(served) -> None:
    """Concurrent large uploads beyond the in-flight budget: every 429 carries the JSON error
    body, its Content-Type and Retry-After, read by a real client (not an empty body)."""
    from concurrent.futures import ThreadPoolExecutor

    _, port, _ = served
    image = png_bytes(np.random.default_rng(1).integers(0, 255, (900, 900, 3), dtype=np.uint8))
    assert len(image) > 2_000_000

    def post(_: int) -> httpx.Response:
        headers = {"Content-Type": "image/png"}
        return httpx.post(
            f"http://127.0.0.1:{port}/segment", content=image, headers=headers, timeout=60
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    busy = [r for r in answers if r.status_code == 429]
    assert busy and any(r.status_code == 200 for r in answers), [r.status_code for r in answers]
    for r in busy:
        assert (
            r.headers["content-type"] == "application/problem+json"
            and r.headers["retry-after"] == "1"
        )
        assert r.json()["error"] == "busy" and r.json()["status"] == 429


def _model_process(pid: int) -> psutil.Process:
    found = [p for p in _descendants(pid) if "roadseg.serve.modelproc" in " ".join(p.cmdline())]
    assert len(found) == 1, [p.cmdline() for p in _descendants(pid)]
    return found[0]


def test_a_model_process_killed_mid_batch_gives_503_then_serves_again(served) -> None:
    """The network runs in a child of the worker (serve.model_process): killed with a request's
    batch in it, that request gets 503 + Retry-After (never a reset or a hang), the next request
    is served by a new process with the same mask, and the monitoring log has no torn line."""
    proc, port, tmp = served
    url = f"http://127.0.0.1:{port}/segment"
    image = png_bytes(np.random.default_rng(5).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    headers = {"Content-Type": "image/png"}
    first = httpx.post(url, content=image, headers=headers, timeout=60)
    assert first.status_code == 200
    child = _model_process(proc.pid)
    child.suspend()  # the batch goes in and waits there: then the process dies with it
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, url, content=image, headers=headers, timeout=60)
        time.sleep(1.5)
        assert not pending.done()
        child.kill()
        died = pending.result(60)
    assert died.status_code == 503, died.text
    assert (
        died.headers["retry-after"] and died.headers["content-type"] == "application/problem+json"
    )
    assert died.json()["status"] == 503 and "retry" in died.json()["detail"]
    again = httpx.post(url, content=image, headers=headers, timeout=120)
    assert again.status_code == 200 and again.content == first.content
    assert _model_process(proc.pid).pid != child.pid
    time.sleep(1.0)  # the monitoring rows are written off the response path
    lines = [
        line for f in (tmp / "monitoring").glob("*.jsonl") for line in f.read_text().splitlines()
    ]
    rows = [json.loads(line) for line in lines]  # a torn line would not parse
    assert [(r["width"], r["height"]) for r in rows] == [(90, 60), (90, 60)]
