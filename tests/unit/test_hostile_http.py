"""The HTTP layer under hostile traffic, in-process: every failure a JSON 4xx, bounded metric
labels, body timeouts, multipart part counts, disconnect cancellation, the API key.

The live counterpart (a real `bentoml serve`, raw sockets, memory) is
tests/integration/test_hostile_live.py.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import time
import zipfile

import pytest
from test_service_app import H, image_bytes, monkeypatch_module, served  # noqa: F401

from roadseg.serve.decoding import Limits
from roadseg.serve.httpconn import KNOWN_ROUTES, UNKNOWN_ROUTE, route_label
from roadseg.serve.httpguard import GuardMiddleware, PartCounter, _refusal
from tests.images import zip_bytes

PNG = image_bytes(8, 8)[0]
JSON_CT = {"content-type": "application/json"}
MANY_PARTS = (
    b'--ab\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nx\r\n' * 1500
    + b"--ab--\r\n"
)
GZIP_BOMB = __import__("gzip").compress(b" " * 20_000_000)  # 20 kB that would inflate to 20 MB


def _multipart(disposition: bytes | None, boundary: bytes = b"ab") -> dict:
    """One hand-built part carrying the PNG, with this Content-Disposition (None: no header)."""
    head = b"Content-Disposition: " + disposition + b"\r\n" if disposition is not None else b""
    body = b"--" + boundary + b"\r\n" + head + b"\r\n" + PNG + b"\r\n--" + boundary + b"--\r\n"
    ctype = b"multipart/form-data; boundary=" + boundary
    return {"content": body, "headers": {"content-type": ctype.decode()}}


# (label, method, path, request kwargs, expected status or None for "any 4xx")
CASES = [
    (
        "deep JSON",
        "post",
        "/predict/returns-json/",
        {"content": b"[" * 100_000, "headers": JSON_CT},
        400,
    ),
    (
        "5000-digit int",
        "post",
        "/predict/returns-json/",
        {
            "content": b'{"image_names": [' + b"7" * 5000 + b'], "images": ["x"]}',
            "headers": JSON_CT,
        },
        400,
    ),
    ("JSON not an object", "post", "/predict/returns-json/", {"json": [1, 2]}, 422),
    (
        "JSON images not strings",
        "post",
        "/predict/returns-json/",
        {"json": {"image_names": ["a"], "images": [{"x": 1}]}},
        422,
    ),
    (
        "empty JSON body",
        "post",
        "/predict/returns-json/",
        {"content": b"", "headers": JSON_CT},
        400,
    ),
    (
        "binary as JSON",
        "post",
        "/predict/returns-json/",
        {"content": b"\xff\xfe\x00", "headers": JSON_CT},
        400,
    ),
    ("empty /segment", "post", "/segment", {"content": b""}, 400),
    (
        "text as image",
        "post",
        "/segment",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
    ),
    (
        "GIF",
        "post",
        "/segment",
        {"files": {"image": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")}},
        None,
    ),
    ("3000 parts", "post", "/segment", {"files": [("image", ("a.png", b"x"))] * 3000}, 413),
    (
        "3000 fields",
        "post",
        "/predict-image/returns-zip/",
        {"data": {f"f{i}": "1" for i in range(3000)}, "files": {"files": ("a.png", PNG)}},
        413,
    ),
    ("no files part", "post", "/predict-image/returns-zip/", {"data": {"x": "1"}}, 422),
    (
        "ZIP of nothing",
        "post",
        "/predict-image/returns-zip/",
        {"files": {"files": ("z.zip", zip_bytes({"a.txt": b"x"}))}},
        400,
    ),
    (
        "ZIP with ../",
        "post",
        "/predict-image/returns-zip/",
        {"files": {"files": ("z.zip", zip_bytes({"../../etc/x.png": PNG}))}},
        400,
    ),
    (
        "broken ZIP",
        "post",
        "/predict-image/returns-zip/",
        {"files": {"files": ("z.zip", b"PK\x03\x04" + b"\0" * 40)}},
        400,
    ),
    (
        "video not a video",
        "post",
        "/predict-video/returns-zip/",
        {"files": {"file": ("v.mp4", b"\0" * 64)}},
        415,
    ),
    (
        "video bad suffix",
        "post",
        "/predict-video/returns-zip/",
        {"files": {"file": ("v.exe", b"\0" * 64)}},
        415,
    ),
    (
        "video garbage mp4",
        "post",
        "/predict-video/returns-zip/",
        {"files": {"file": ("v.mp4", b"\0\0\0\x18ftypisom" + b"\x07" * 500)}},
        400,
    ),
    ("upload bad format", "post", "/upload?format=%00", {"files": {"file": ("a.png", PNG)}}, 422),
    ("GET on POST route", "get", "/segment", {}, 405),
    ("PUT on legacy route", "put", "/upload", {}, 405),
    ("unknown path", "get", "/../../etc/passwd", {}, 404),
    (
        "format query junk",
        "post",
        "/segment?format=%ff%fe",
        {"files": {"image": ("a.png", PNG)}},
        422,
    ),
    # ---- round 2: typed routes' multipart (each was a 500 from BentoML's form parsing)
    (
        "multipart without boundary",
        "post",
        "/segment",
        {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
    ),
    (
        "BOUNDARY in capitals, 1500 parts",
        "post",
        "/segment",
        {"content": MANY_PARTS, "headers": {"content-type": "multipart/form-data; BOUNDARY=ab"}},
        413,
    ),
    (
        "two boundary parameters, 1500 parts",
        "post",
        "/segment/json",
        {
            "content": MANY_PARTS,
            "headers": {"content-type": "multipart/form-data; boundary=zz; boundary=ab"},
        },
        413,
    ),
    (
        "2 MB format field",
        "post",
        "/segment",
        {"files": {"image": ("a.png", PNG)}, "data": {"format": "x" * 2_000_000}},
        400,
    ),
    ("part without a name", "post", "/segment", _multipart(b'form-data; filename="a.png"'), 400),
    ("part without disposition", "post", "/segment/json", _multipart(None), 400),
    (
        "2 MB part header",
        "post",
        "/segment",
        _multipart(b'form-data; name="image"; filename="a.png"\r\nX-A: ' + b"a" * 2_000_000),
        400,
    ),
    (
        "5000-byte boundary",
        "post",
        "/segment",
        _multipart(b'form-data; name="image"', b"b" * 5000),
        400,
    ),
    (
        "10 kB file name",
        "post",
        "/segment",
        {"files": {"image": ("a" * 10_000 + ".png", PNG)}},
        400,
    ),
    ("image as a JSON body", "post", "/segment", {"json": {"image": "/etc/passwd"}}, 415),
    ("two image parts", "post", "/segment", {"files": [("image", ("a.png", PNG))] * 2}, 400),
    # ---- round 2: encodings, methods, paths
    (
        "gzip request body",
        "post",
        "/predict/returns-json/",
        {"content": GZIP_BOMB, "headers": {**JSON_CT, "content-encoding": "gzip"}},
        415,
    ),
    (
        "gzip raw image",
        "post",
        "/segment",
        {"content": PNG, "headers": {"content-type": "image/png", "content-encoding": "GZIP"}},
        415,
    ),
    ("TRACE", "request:TRACE", "/segment", {}, 405),
    ("OPTIONS", "options", "/predict-image/returns-zip/", {}, 405),
    ("DELETE on /classes", "delete", "/classes", {}, 405),
    ("PATCH on /upload", "patch", "/upload", {}, 405),
    ("UI NUL byte", "get", "/ui/%00", {}, 404),
    ("UI encoded traversal", "get", "/ui/%2e%2e/%2e%2e/bento/service.py", {}, 404),
    ("UI encoded slashes", "get", "/ui/..%2f..%2fservice.py", {}, 404),
    ("UI 300-char name", "get", "/ui/" + "a" * 300, {}, 404),
    (
        "key in the query string",
        "get",
        "/classes?api_key=k&X-API-Key=in-process-key",
        {"headers": {"X-API-Key": ""}},
        401,
    ),
    (
        "Basic auth",
        "get",
        "/classes",
        {"headers": {"X-API-Key": "", "Authorization": "Basic aW4tcHJvY2Vzcy1rZXk6"}},
        401,
    ),
]


def assert_problem(r) -> dict:
    """An RFC 9457 problem body with our code, and the members of the earlier body kept."""
    from http import HTTPStatus

    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert body["type"] == "about:blank" and body["title"] == HTTPStatus(r.status_code).phrase
    assert body["status"] == r.status_code and body["detail"] and body["error"], body
    return body


@pytest.mark.parametrize(
    ("label", "method", "path", "kwargs", "status"), CASES, ids=[c[0] for c in CASES]
)
def test_every_failure_is_a_json_4xx(served, label, method, path, kwargs, status):  # noqa: F811
    client, _, _, _ = served
    kwargs = dict(kwargs)
    headers = {k: v for k, v in {**H, **kwargs.pop("headers", {})}.items() if v}
    if method.startswith("request:"):
        r = client.request(method.split(":", 1)[1], path, headers=headers, **kwargs)
    else:
        r = getattr(client, method)(path, headers=headers, **kwargs)
    assert 400 <= r.status_code < 500, (label, r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (label, r.text[:300])
    assert_problem(r)
    assert "Traceback" not in r.text and "/work/" not in r.text and ".py" not in r.text
    if r.status_code == 405:  # RFC 9110: a 405 lists the methods the route takes
        assert r.headers["allow"], label
    if r.status_code == 401:
        assert r.headers["www-authenticate"].startswith("Bearer"), label
    ok = client.post("/segment", files={"image": ("g.png", PNG)}, headers=H)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "name", ["a\x00b.png", "../../x.png", "c\x01\x7f\u202e.png", "\ud800.png"[1:]]
)
def test_hostile_file_names_give_safe_unique_zip_names(served, name):  # noqa: F811
    client, _, _, _ = served
    files = [("files", (name, PNG)), ("files", (name, PNG))]
    r = client.post("/predict-image/returns-zip/", files=files, headers=H)
    assert r.status_code == 200, r.text
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert len(set(names)) == len(names) == 6
    assert all(n.isprintable() and ".." not in n and n.count("/") == 1 for n in names)


def test_pixel_budget_spans_parts_and_json(served, monkeypatch):  # noqa: F811
    import dataclasses

    import bentoml

    client, _, _, _ = served
    client.get("/readyz")
    state = bentoml.get_current_service().state
    monkeypatch.setattr(state, "limits", dataclasses.replace(state.limits, max_request_pixels=5000))
    img = image_bytes(40, 50)[0]  # 2000 px: two fit, three do not
    two, three = [("files", ("a.png", img))] * 2, [("files", ("a.png", img))] * 3
    assert client.post("/predict-image/returns-zip/", files=two, headers=H).status_code == 200
    for r in (
        client.post("/predict-image/returns-zip/", files=three, headers=H),
        client.post(
            "/predict-image/returns-zip/",
            files={"files": ("z.zip", zip_bytes({f"{i}.png": img for i in range(3)}))},
            headers=H,
        ),
        client.post(
            "/predict/returns-json/",
            json={
                "image_names": ["a"] * 3,
                "images": [__import__("base64").b64encode(img).decode()] * 3,
            },
            headers=H,
        ),
        client.post("/segment", files={"image": ("big.png", image_bytes(80, 80)[0])}, headers=H),
        client.post(
            "/upload?format=mask", files={"file": ("big.png", image_bytes(80, 80)[0])}, headers=H
        ),
    ):
        assert r.status_code == 413 and r.json()["error"] == "request_too_many_pixels", r.text


def test_metric_labels_do_not_grow_with_random_paths(served):  # noqa: F811
    import prometheus_client

    client, _, _, _ = served

    def endpoints() -> set[str]:
        out = set()
        for metric in prometheus_client.REGISTRY.collect():
            for sample in metric.samples:
                if "endpoint" in sample.labels:
                    out.add(sample.labels["endpoint"])
        return out

    client.get("/nothing-here-0")
    before = endpoints()
    for i in range(200):
        client.get(f"/random-{i}/x{i}")  # unauthenticated
        client.post(f"/p{i}", headers=H)
    after = endpoints()
    assert after == before and UNKNOWN_ROUTE in after
    assert not any("random" in e for e in after)


def test_known_routes_cover_every_route_of_the_service():
    from bento.service import RoadSegService
    from roadseg.serve.app import build_app

    legacy = {getattr(r, "path", "") for r in build_app(lambda: None).routes}
    typed = {api.route for api in RoadSegService.apis.values()}
    assert (legacy | typed) - {""} <= KNOWN_ROUTES
    assert route_label("/ui/app.js") == "/ui" and route_label("/segmentx") == UNKNOWN_ROUTE


def test_api_key_is_one_header_compared_in_constant_time():
    from roadseg.serve.api import ServingState

    state = ServingState(api_key="k")
    scope = lambda *h: {"path": "/segment", "headers": list(h)}  # noqa: E731
    assert _refusal(scope((b"x-api-key", b"k")), state) is None
    assert _refusal(scope((b"authorization", b"Bearer k")), state) is None
    for headers in [
        ((b"x-api-key", b"k"), (b"x-api-key", b"k")),
        ((b"x-api-key", b"wrong"), (b"x-api-key", b"k")),
        ((b"x-api-key", b"k"), (b"authorization", b"Bearer k")),
        ((b"x-api-key", b"K"),),
    ]:
        assert _refusal(scope(*headers), state)[0] == 401
    assert "hmac.compare_digest" in inspect.getsource(_refusal)


def test_part_counter_finds_boundaries_split_across_chunks():
    scope = {"headers": [(b"content-type", b'multipart/form-data; boundary="xyz"')]}
    body = b"--xyz\r\na\r\n--xyz\r\nb\r\n--xyz\r\nc\r\n--xyz--"  # 3 parts
    for limit, refused in ((3, False), (2, True)):
        counter = PartCounter(scope, limit)
        results = [counter.add(body[i : i + 3]) for i in range(0, len(body), 3)]
        assert counter.count == 4 and any(results) is refused


# ---------------------------------------------------------------- the guard on a bare ASGI app


def _run_guard(app, messages, limits: Limits, *, gap: float = 0.0):
    """Drive GuardMiddleware(app) with `messages` (then silence); return (sent, seconds)."""
    from roadseg.serve.api import ServingState

    sent: list[dict] = []
    queue = list(messages)

    async def receive() -> dict:
        if queue:
            await asyncio.sleep(gap)
            return queue.pop(0)
        await asyncio.sleep(3600)  # the client sends nothing more
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/upload", "method": "POST", "headers": []}
    guard = GuardMiddleware(app, ServingState(limits=limits))
    start = time.perf_counter()
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 10))
    return sent, time.perf_counter() - start


async def _read_body_app(scope, receive, send) -> None:
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_lying_content_length_gets_408_within_the_body_timeout():
    limits = Limits(body_timeout_seconds=0.3, max_body_seconds=5)
    first = {"type": "http.request", "body": b"abc", "more_body": True}
    sent, seconds = _run_guard(_read_body_app, [first], limits)
    assert sent[0]["status"] == 408 and seconds < 2
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "body_timeout"


def test_trickled_body_gets_408_at_the_total_deadline():
    limits = Limits(body_timeout_seconds=1, max_body_seconds=0.5)
    drip = [{"type": "http.request", "body": b"x", "more_body": True}] * 100
    sent, seconds = _run_guard(_read_body_app, drip, limits, gap=0.05)
    assert sent[0]["status"] == 408 and seconds < 2


def test_client_hang_up_cancels_the_route_before_its_work():
    done: list[str] = []

    async def slow_app(scope, receive, send) -> None:
        await receive()
        await asyncio.sleep(5)  # decoding and inference would run here
        done.append("worked")

    messages = [{"type": "http.request", "body": b"img"}, {"type": "http.disconnect"}]
    sent, seconds = _run_guard(slow_app, messages, Limits())
    assert done == [] and sent == [] and seconds < 2


def test_an_unexpected_error_is_a_500_problem_at_once_not_a_hang() -> None:
    """Found by the API fuzzer: BentoML's TimeoutMiddleware, above the guard, would hold the
    client for its 300 s timeout and then close with no answer at all."""

    async def broken_app(scope, receive, send) -> None:
        await receive()
        raise ValueError("a bug, with a /secret/path in its message")

    sent, seconds = _run_guard(broken_app, [{"type": "http.request", "body": b""}], Limits())
    assert sent[0]["status"] == 500 and seconds < 2
    body = json.loads(sent[1]["body"])
    assert body["error"] == "server_error" and "secret" not in sent[1]["body"].decode()

    async def broken_midway(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("after the answer started")

    with pytest.raises(ValueError):  # the server closes the connection: nothing else to say
        _run_guard(broken_midway, [], Limits())


# ---------------------------------------------------------------- round 2


@pytest.mark.parametrize(
    "ctype",
    [
        b"multipart/form-data; BOUNDARY=xyz",
        b"Multipart/Form-Data; boundary=wrong; boundary=xyz",  # the last one wins, as in starlette
        b'multipart/form-data; charset=utf-8; boundary="xyz"',
    ],
)
def test_part_counter_reads_the_boundary_as_the_form_parser_does(ctype):
    body = b"--xyz\r\na\r\n--xyz\r\nb\r\n--xyz\r\nc\r\n--xyz--"
    counter = PartCounter({"headers": [(b"Content-Type", ctype)]}, 2)
    assert counter.add(body) is True and counter.count == 4


def test_a_non_ascii_api_key_matches_its_utf8_header_only():
    from roadseg.serve.api import ServingState

    state = ServingState(api_key="clé-ü")
    scope = lambda v: {"path": "/segment", "headers": [(b"x-api-key", v)]}  # noqa: E731
    assert _refusal(scope("clé-ü".encode()), state) is None
    for wrong in ("clé-ü".encode("latin-1"), b"cle-u", "clé-ü".encode() + b" ", b""):
        assert _refusal(scope(wrong), state)[0] == 401


def test_a_client_leaving_mid_body_is_not_an_error():
    from starlette.requests import Request

    read: list[bytes] = []

    async def app(scope, receive, send) -> None:
        read.append(await Request(scope, receive).body())  # raises ClientDisconnect

    messages = [{"type": "http.request", "body": b"half", "more_body": True}]
    messages.append({"type": "http.disconnect"})
    sent, _ = _run_guard(app, messages, Limits())  # would raise ClientDisconnect before
    assert sent == [] and read == []


def test_image_field_holding_a_url_is_never_fetched(served):  # noqa: F811
    """BentoML's typed routes download a multipart `image` field that is text, not a file, as a
    URL (a server-side request to wherever the client says). Such a field is image bytes at
    most, never fetched."""
    import http.server
    import threading

    client, _, _, _ = served
    hits: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/internal.png"
    try:
        for path in ("/segment", "/segment/json"):
            r = client.post(path, data={"image": url}, headers=H)
            assert r.status_code == 415 and r.json()["error"] == "not_an_image", r.text
    finally:
        server.shutdown()
    assert hits == []
    assert client.post("/segment", files={"image": ("g.png", PNG)}, headers=H).status_code == 200


def test_bentoml_pickle_bodies_are_never_unpickled(served, tmp_path):  # noqa: F811
    import pickle

    client, _, _, _ = served
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    body = pickle.dumps({"image": Boom()})
    for path in ("/segment", "/segment/json"):
        r = client.post(
            path, content=body, headers={**H, "Content-Type": "application/vnd.bentoml+pickle"}
        )
        assert r.status_code == 415 and r.json()["status"] == 415, r.text
    assert not marker.exists()


def test_bodies_in_flight_share_one_memory_budget():
    """Each request is bounded alone; many big ones at once are bounded together: while two
    40-byte bodies are being served under a 100-byte budget a third gets 429 (Retry-After, the
    connection closed), small and body-less requests still pass, and once the big ones are
    answered a big one is accepted again."""
    from roadseg.serve.api import ServingState

    limits = Limits(max_request_bytes=60, max_inflight_bytes=100)
    release = asyncio.Event()
    answered: list[str] = []

    async def app(scope, receive, send) -> None:
        while (await receive()).get("more_body", False):
            pass
        if scope["path"] == "/slow":
            await release.wait()
        answered.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = GuardMiddleware(app, ServingState(limits=limits))

    async def call(path: str, length: int | None, chunked: bool = False) -> list[dict]:
        headers = [(b"content-length", str(length).encode())] if length is not None else []
        if chunked:
            headers = [(b"transfer-encoding", b"chunked")]
        scope = {"type": "http", "path": path, "method": "POST", "headers": headers}
        body = [{"type": "http.request", "body": b"x" * (length or 0), "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            return body.pop(0) if body else await asyncio.Event().wait()

        async def send(message: dict) -> None:
            sent.append(message)

        await guard(scope, receive, send)
        return sent

    async def run():
        slow = [asyncio.create_task(call("/slow", 40)) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await call("/segment", 40)
        refused_chunked = await call("/segment", None, chunked=True)
        small = await call("/small", 10)
        bodyless = await call("/metadata", None)
        release.set()
        await asyncio.gather(*slow)
        again = await call("/segment", 40)
        return refused, refused_chunked, small, bodyless, again, guard.inflight

    refused, refused_chunked, small, bodyless, again, inflight = asyncio.run(run())
    for sent in (refused, refused_chunked):
        assert sent[0]["status"] == 429
        assert (b"retry-after", b"1") in sent[0]["headers"]
        assert (b"connection", b"close") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["error"] == "busy"
    assert small[0]["status"] == bodyless[0]["status"] == again[0]["status"] == 200
    assert answered == ["/small", "/metadata", "/slow", "/slow", "/segment"]
    assert inflight == 0  # every reservation given back


def test_the_document_declares_every_answer_the_service_gives(served):  # noqa: F811
    """Each refusal of CASES on a documented operation is a status the document lists for it,
    with a body its `Problem` schema accepts; a status outside the list fails here (a generated
    client would mis-parse it)."""
    import jsonschema

    client, _, _, _ = served
    doc = client.get("/docs.json").json()
    problem = doc["components"]["schemas"]["Problem"]
    checked = 0
    for label, method, path, kwargs, _ in CASES:
        verb = method.split(":", 1)[1].lower() if method.startswith("request:") else method
        operation = doc["paths"].get(path.split("?")[0], {}).get(verb)
        kwargs = dict(kwargs)
        headers = {k: v for k, v in {**H, **kwargs.pop("headers", {})}.items() if v}
        r = client.request(verb.upper(), path, headers=headers, **kwargs)
        if operation is None:  # a path or method the document does not have
            assert r.status_code in (404, 405), label
            continue
        assert str(r.status_code) in operation["responses"], (label, r.status_code)
        declared = operation["responses"][str(r.status_code)]["content"]
        assert r.headers["content-type"] in declared, label
        jsonschema.validate(r.json(), problem)
        checked += 1
    assert checked >= 30
    segment = doc["paths"]["/segment"]["post"]
    assert {"image/png", "image/jpeg", "multipart/form-data"} <= set(
        segment["requestBody"]["content"]
    )
    fmt = next(p for p in segment["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["mask", "color", "overlay"]
    zip_body = doc["components"]["schemas"]["Body_predict_zip_predict_image_returns_zip__post"]
    assert zip_body["properties"]["files"]["minItems"] == 1
    assert "HTTPValidationError" not in json.dumps(doc)
