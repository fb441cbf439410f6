"""Hostile traffic against a live `bentoml serve` (uvicorn + httptools, an API key): slowloris and
lying bodies on raw sockets, a hang-up, random paths against the metrics, and a generated battery
of hostile payloads. Each case asserts its status, that the service still answers and that a good
request still succeeds; over the whole module the server's process tree may grow by less than
RSS_BOUND_MB of resident memory.
"""

from __future__ import annotations

import base64
import io
import json
import re
import select
import socket
import time
import zipfile

import httpx
import pytest
from hostile_payloads import BATTERY, flat_png, png
from PIL import Image
from service_helpers import tree_rss_mb

from roadseg.testing import params_with, running_service, save_random_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "hostile-live-key"
H = {"X-API-Key": KEY}
RSS_BOUND_MB = 300
HEADER_TIMEOUT, BODY_TIMEOUT, MAX_BODY_SECONDS, SEND_TIMEOUT = 2, 2, 6, 3


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hostile-live")
    save_random_checkpoint(tmp / "model.pt", base_channels=4, seed=2, epoch=1)
    params = params_with(
        tmp / "params.yaml",
        {
            "max_request_bytes: 52428800": "max_request_bytes: 8000000",
            "max_image_pixels: 40000000": "max_image_pixels: 4000000",
            "max_zip_uncompressed_bytes: 209715200": "max_zip_uncompressed_bytes: 8000000",
            "max_request_pixels: 1000000000": "max_request_pixels: 6000000",
            "header_timeout_seconds: 10": f"header_timeout_seconds: {HEADER_TIMEOUT}",
            "body_timeout_seconds: 15": f"body_timeout_seconds: {BODY_TIMEOUT}",
            "max_body_seconds: 120": f"max_body_seconds: {MAX_BODY_SECONDS}",
            "send_timeout_seconds: 30": f"send_timeout_seconds: {SEND_TIMEOUT}",
        },
    )
    env = {
        "ROADSEG_MODEL_URI": str(tmp / "model.pt"),
        "ROADSEG_PARAMS": str(params),
        "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
        "ROADSEG_API_KEY": KEY,
        "BENTOML_HOME": str(tmp / "bentoml"),
        "TMPDIR": str(tmp),
    }
    with (
        running_service(env, log_path=tmp / "serve.log") as url,
        httpx.Client(base_url=url, headers=H, timeout=60) as client,
    ):
        port = int(url.rsplit(":", 1)[1])
        assert client.post("/segment", files={"image": ("w.png", png())}).status_code == 200
        yield client, port, tmp, tree_rss_mb(port)


def still_serving(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    r = client.post("/segment", files={"image": ("good.png", png(20, 30))})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (30, 20)


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.settimeout(30)
    return s


def read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    start, got = time.monotonic(), b""
    s.settimeout(limit)
    try:
        while chunk := s.recv(65536):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return got, time.monotonic() - start


# ---------------------------------------------------------------- the connection layer


def test_slowloris_header_trickle_is_cut_off(live) -> None:
    client, port, _, _ = live
    s = raw(port)
    start, answer = time.monotonic(), None
    s.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\n")
    for i in range(80):  # one header line every 0.25 s, never finishing
        if select.select([s], [], [], 0.25)[0]:
            answer = s.recv(65536)  # the 408, or b"" once closed
            break
        try:
            s.sendall(f"X-Drip-{i}: a\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
            break
    elapsed = time.monotonic() - start
    s.close()
    assert answer is not None and elapsed < HEADER_TIMEOUT + 2, elapsed
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    still_serving(client)


def test_silent_connection_is_closed_with_408(live) -> None:
    client, port, _, _ = live
    s = raw(port)
    got, seconds = read_until_closed(s, HEADER_TIMEOUT + 5)
    s.close()
    assert got.startswith(b"HTTP/1.1 408") and b"header_timeout" in got, got[:200]
    assert seconds < HEADER_TIMEOUT + 2
    still_serving(client)


def test_endless_header_is_refused_431(live) -> None:
    client, port, _, _ = live
    s = raw(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
    got, _ = read_until_closed(s, 10)
    s.close()
    assert got.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), got[:200]
    still_serving(client)


def test_websocket_outlives_the_header_timeout(live) -> None:
    from websockets.sync.client import connect

    client, _, _, _ = live
    url = str(client.base_url).replace("http://", "ws://") + "/stream"
    with connect(url, subprotocols=["roadseg", f"roadseg.key.{KEY}"], open_timeout=30) as ws:
        time.sleep(HEADER_TIMEOUT + 1.5)  # the HTTP header timer must not touch an upgraded socket
        ws.send(png(24, 32))
        head = json.loads(ws.recv(timeout=30))
        assert head["frame"] == 0 and (head["width"], head["height"]) == (32, 24)
        assert isinstance(ws.recv(timeout=30), bytes)


def test_lying_content_length_gets_408(live) -> None:
    client, port, _, _ = live
    s = raw(port)
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: image/png\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    s.sendall(head.encode() + png()[:100])
    got, seconds = read_until_closed(s, BODY_TIMEOUT + 10)
    s.close()
    assert got.startswith(b"HTTP/1.1 408") and b"body_timeout" in got, got[:300]
    assert seconds < BODY_TIMEOUT + 2
    still_serving(client)


def test_trickled_body_hits_the_total_deadline(live) -> None:
    client, port, _, _ = live
    s = raw(port)
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: image/png\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    s.sendall(head.encode())
    start, answered = time.monotonic(), b""
    s.settimeout(0.5)
    while time.monotonic() - start < MAX_BODY_SECONDS + 6:
        try:
            s.sendall(b"x" * 10)  # always within the per-chunk timeout, never done
            answered += s.recv(65536)
            if answered:
                break
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    seconds = time.monotonic() - start
    s.close()
    assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
    assert seconds < MAX_BODY_SECONDS + 2
    still_serving(client)


def test_hung_up_request_is_not_inferred(live) -> None:
    client, port, tmp, _ = live

    def rows() -> int:
        return sum(len(f.read_text().splitlines()) for f in (tmp / "monitoring").rglob("*.*"))

    time.sleep(1)
    before = rows()
    members = {f"{i}.png": flat_png(700, 700, seed=i) for i in range(8)}  # ~4 Mpx to decode
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    body = buf.getvalue()
    boundary = "hangup0boundary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="z.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict-image/returns-zip/ HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    s = raw(port)
    s.sendall(head.encode() + payload)
    s.close()  # hang up at once
    time.sleep(6)
    assert rows() - before < 8  # the 8 images were not all inferred (usually none is)
    still_serving(client)


def test_random_paths_do_not_grow_metric_labels(live) -> None:
    client, _, _, _ = live
    base = str(client.base_url)

    def endpoints() -> set[str]:
        text = httpx.get(f"{base}/metrics").text
        return {
            line.split('endpoint="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if 'endpoint="' in line and not line.startswith("#")
        }

    httpx.get(f"{base}/warm-up-unknown")
    before = endpoints()
    with httpx.Client(base_url=base, timeout=30) as anonymous:
        for i in range(200):
            anonymous.get(f"/r{i}/{i * 7919}")
    after = endpoints()
    assert len(after) <= len(before) + 1, sorted(after - before)[:10]
    assert not any(e.startswith("/r1") for e in after)
    still_serving(client)


# ---------------------------------------------------------------- round 2: below the app

PARSER_REJECTS = {
    "Content-Length and Transfer-Encoding": b"POST /segment HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /segment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "space in a header name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "two Content-Lengths": b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "80 kB URL": b"GET /healthz?" + b"a=1&" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", PARSER_REJECTS.values(), ids=list(PARSER_REJECTS))
def test_requests_the_http_parser_rejects_get_json_400(live, request_bytes) -> None:
    """uvicorn answers these itself, below the app, as text/plain; the guarded protocol as JSON."""
    client, port, _, _ = live
    s = raw(port)
    s.sendall(request_bytes)
    got, _ = read_until_closed(s, 10)
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head, got[:300]
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Bad Request",
        "error": "bad_http_request",
        "detail": json.loads(body)["detail"],
        "status": 400,
    }
    still_serving(client)


def test_idle_keep_alive_connection_closes_without_a_stray_408(live) -> None:
    """After a response, a silent keep-alive connection is closed without a word: an unasked
    408 there races with the client's next request on the pooled connection."""
    client, port, _, _ = live
    s = raw(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got, seconds = read_until_closed(s, HEADER_TIMEOUT + 8)
    s.close()
    assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.1") == 1, got[:400]
    assert b"header_timeout" not in got and seconds < HEADER_TIMEOUT + 6
    still_serving(client)


def test_pipelined_requests_are_answered_in_order(live) -> None:
    client, port, _, _ = live
    s = raw(port)
    s.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + f"GET /classes HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\r\n".encode()
        + b"GET /classes HTTP/1.1\r\nHost: x\r\n\r\n"  # no key
    )
    got, _ = read_until_closed(s, HEADER_TIMEOUT + 8)
    s.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", got)  # bodies run into the next status line
    assert statuses == [b"200", b"200", b"401"], got[:600]
    assert b'"road"' in got
    still_serving(client)


def test_many_idle_connections_do_not_block_a_good_request(live) -> None:
    client, port, _, _ = live
    idle = [raw(port) for _ in range(150)]
    try:
        still_serving(client)
        time.sleep(HEADER_TIMEOUT + 1.5)
        closed = 0
        for s in idle:
            got, _ = read_until_closed(s, 2)
            closed += got.startswith(b"HTTP/1.1 408")
        assert closed == len(idle)
    finally:
        for s in idle:
            s.close()
    still_serving(client)


def test_a_body_of_tiny_chunks_is_cut_off(live) -> None:
    """A million 1-byte chunks is a 6 MB upload costing the parser a million callbacks; the
    connection is refused (413) once a body passes 100k chunks, before the route sees it."""
    client, port, _, _ = live
    s = raw(port)
    s.sendall(
        f"POST /predict/returns-json/ HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    got = b""
    try:
        for _ in range(100):
            s.sendall(b"1\r\n \r\n" * 10_000)
        s.sendall(b"0\r\n\r\n")
        got, _ = read_until_closed(s, 10)
    except (BrokenPipeError, ConnectionResetError):
        pass  # cut off while sending: the server did not read the rest
    s.close()
    assert b"bad_json" not in got, got[:300]  # the route never parsed the million chunks
    assert got == b"" or (got.startswith(b"HTTP/1.1 413") and b"too_many_chunks" in got), got[:300]
    still_serving(client)


def test_a_client_that_never_reads_its_answer_is_cut_off(live) -> None:
    """uvicorn has no send timeout: a client that stops reading held its connection, and the
    unsent answer, for ever. Now the connection is aborted once nothing was read for
    `send_timeout_seconds`."""
    client, port, _, _ = live
    doc = json.dumps({"image_names": ["n"], "images": [base64.b64encode(png(1250, 1500)).decode()]})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the answer waits
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"POST /predict/returns-json/ HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(doc)}\r\n\r\n{doc}".encode()
    )
    time.sleep(SEND_TIMEOUT + HEADER_TIMEOUT + 8)  # inference, then the stall
    got, _ = read_until_closed(s, 10)
    s.close()
    head = got.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200"), got[:200]
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    assert len(got) - len(head) - 4 < length  # aborted: the rest of the answer never came
    still_serving(client)


# ---------------------------------------------------------------- a generated battery


@pytest.mark.parametrize(
    ("label", "path", "kwargs", "status"), BATTERY, ids=[b[0] for b in BATTERY]
)
def test_battery(live, label, path, kwargs, status) -> None:
    client, _, _, _ = live
    request = kwargs()
    start = time.monotonic()
    r = client.post(path, **request)
    assert r.status_code == status, (label, r.status_code, r.text[:300])
    body = r.json()
    assert body["status"] == status and "Traceback" not in r.text and ".py" not in r.text
    assert time.monotonic() - start < 15, label
    still_serving(client)


def test_memory_stayed_bounded(live) -> None:
    client, port, _, start_mb = live
    now = tree_rss_mb(port)
    print(f"\nserver process tree RSS: {start_mb:.0f} MB at start, {now:.0f} MB after the battery")
    assert now - start_mb < RSS_BOUND_MB, (start_mb, now)
    still_serving(client)
