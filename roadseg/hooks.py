"""Every place roadseg reaches into a library's private internals, and the version it was written
against: the one home of that fact.

Each library named here is pinned exactly in pyproject.toml and in requirements/lock.txt at the
version below (tests/unit/test_hooks.py checks both). Upgrading one is deliberate: `make lock
UPGRADE="-P <package>"`, then `make test`; test_hooks names each hook whose target moved, and the
hook's own tests (`tests=`) show whether its behaviour still holds. Then raise `version` here.

Where a public setting does the job, there is no hook. None does for the serving hooks: BentoML
1.4 builds `uvicorn.Config` itself and passes neither a protocol class, a header timeout nor
WebSocket options, and labels its metrics by raw path. They are installed in one place,
`roadseg.serve.protocols.install_protocol_hooks`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Hook:
    """One use of a library internal: `target` ("module:attribute") must exist, and so must
    `members` on it (methods, class attributes, `self.<name>` set in its source, or keyword
    parameters of its constructor)."""

    package: str  # the distribution, as pip names it
    version: str  # the version the hook was written and tested against
    target: str
    members: tuple[str, ...] = ()
    used_by: str = ""
    tests: str = ""  # the tests that show the hook still works


HOOKS: tuple[Hook, ...] = (
    Hook(
        "uvicorn",
        "0.54.0",
        "uvicorn.config:HTTP_PROTOCOLS",
        ("auto",),
        "roadseg.serve.httpconn.install_http_guards: replaces the 'auto' HTTP protocol class",
        "tests/integration/test_hostile_live.py",
    ),
    Hook(
        "uvicorn",
        "0.54.0",
        "uvicorn.protocols.http.auto:AutoHTTPProtocol",
        (
            "connection_made",
            "connection_lost",
            "data_received",
            "on_message_begin",
            "on_body",
            "on_response_complete",
            "send_400_response",
            "pause_writing",
            "resume_writing",
            "transport",
            "loop",
            "cycle",
        ),
        "roadseg.serve.httpconn.HeaderGuard: subclassed (header timer, byte cap, chunk cap, send timeout)",
        "tests/integration/test_hostile_live.py, tests/unit/test_hostile_http.py",
    ),
    Hook(
        "httptools",
        "0.9.0",
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
        ("on_body", "on_message_begin", "send_400_response"),
        "roadseg.serve.httpconn.HeaderGuard: uvicorn's 'auto' is this class when httptools is installed"
        "; the chunk cap counts its per-chunk on_body calls",
        "tests/integration/test_hostile_live.py",
    ),
    Hook(
        "uvicorn",
        "0.54.0",
        "uvicorn.config:WS_PROTOCOLS",
        ("auto",),
        "roadseg.serve.wsguard.install_ws_guard: replaces the 'auto' WebSocket protocol class",
        "tests/integration/test_stream_live.py",
    ),
    Hook(
        "uvicorn",
        "0.54.0",
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol",
        (
            "__init__",
            "handle_text",
            "handle_bytes",
            "handle_cont",
            "handle_ping",
            "send_receive_event_to_app",
            "handle_parser_exception",
            "keepalive_timeout",
            "send",
            "on_task_complete",
            "connection_lost",
            "shutdown",
            "stop_keepalive",
            "conn",
            "queue",
            "writable",
            "frames",
            "curr_msg_data_type",
            "close_sent",
            "close_timer",
            "disconnected",
            "read_paused",
            "handshake_complete",
            "initial_response",
            "config",
            "loop",
            "transport",
        ),
        "roadseg.serve.wsguard.WebSocketGuard: subclassed (no deflate, size and fragment caps, pings)",
        "tests/integration/test_stream_live.py, tests/unit/test_stream_hostile.py",
    ),
    Hook(
        "uvicorn",
        "0.54.0",
        "uvicorn.protocols.utils:ClientDisconnected",
        (),
        "roadseg.serve.wsguard.WebSocketGuard.send: raised for a send on a closing connection",
        "tests/integration/test_stream_live.py",
    ),
    Hook(
        "websockets",
        "17.4",
        "websockets.server:ServerProtocol",
        ("extensions", "max_size", "logger", "fail", "data_to_send", "close_sent"),
        "roadseg.serve.wsguard.WebSocketGuard.__init__: replaces uvicorn's connection object",
        "tests/integration/test_stream_live.py",
    ),
    Hook(
        "bentoml",
        "1.4.40",
        "bentoml._internal.server.http.instruments:HTTPTrafficMetricsMiddleware",
        ("__init__", "__call__"),
        "roadseg.serve.httpconn.install_http_guards: replaced by a route-labelled subclass",
        "tests/unit/test_hostile_http.py",
    ),
    Hook(
        "bentoml",
        "1.4.40",
        "bentoml._internal.server.http.instruments:RunnerTrafficMetricsMiddleware",
        ("__init__", "__call__"),
        "roadseg.serve.httpconn.install_http_guards: replaced by a route-labelled subclass",
        "tests/unit/test_hostile_http.py",
    ),
    Hook(
        "bentoml",
        "1.4.40",
        "bentoml._internal.container:construct_containerfile",
        (),
        "roadseg.release.packaging.write_build_context: the Docker context `bentoml containerize` uses",
        "tests/integration/test_packaging.py",
    ),
    Hook(
        "mlflow",
        "3.17.2",
        "mlflow.tracking.fluent:_active_run_stack",
        ("get",),
        "roadseg.tracking.forget_active_run: drops a run whose server is gone",
        "tests/unit/test_training_parts.py::test_forget_active_run_*",
    ),
    Hook(
        "mlflow",
        "3.17.2",
        "mlflow.tracking.fluent:run_id_to_system_metrics_monitor",
        (),
        "roadseg.tracking.forget_active_run: stops the run's system-metrics thread",
        "tests/unit/test_training_parts.py::test_forget_active_run_*",
    ),
    Hook(
        "great-expectations",
        "1.24.1",
        "great_expectations.data_context.types.base:DataContextConfig",
        (),
        "roadseg.data.validation._run_suite: an in-memory context with a Data Docs site",
        "tests/data/test_validation.py",
    ),
    Hook(
        "great-expectations",
        "1.24.1",
        "great_expectations.data_context.types.base:InMemoryStoreBackendDefaults",
        (),
        "roadseg.data.validation._run_suite",
        "tests/data/test_validation.py",
    ),
    Hook(
        "great-expectations",
        "1.24.1",
        "great_expectations.data_context.types.base:ProgressBarsConfig",
        (),
        "roadseg.data.validation._run_suite: progress bars off in pipeline logs",
        "tests/data/test_validation.py",
    ),
)


def pinned_versions() -> dict[str, str]:
    """The version each hooked distribution was written against (one per package)."""
    versions: dict[str, str] = {}
    for hook in HOOKS:
        if versions.setdefault(hook.package, hook.version) != hook.version:
            raise ValueError(f"{hook.package}: two versions in HOOKS")
    return versions


def _resolve(target: str) -> object:
    module, _, attribute = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _has_member(obj: object, name: str) -> bool:
    if isinstance(obj, dict):
        return name in obj
    if hasattr(obj, name):
        return True
    if inspect.isclass(obj):  # a constructor keyword, or self.<name> set somewhere in the MRO
        with contextlib.suppress(TypeError, ValueError):
            if name in inspect.signature(obj).parameters:
                return True
        for cls in obj.__mro__:
            try:
                source = inspect.getsource(cls)
            except (OSError, TypeError):
                continue
            if f"self.{name} =" in source or f"self.{name}:" in source:
                return True
    return False


def problems(hook: Hook) -> list[str]:
    """What no longer holds for `hook`: the installed version, the target, its members. Each
    message names the hook, its user and the version to re-check against."""
    head = f"hook {hook.target} ({hook.used_by}), written against {hook.package}=={hook.version}"
    found: list[str] = []
    try:
        installed = metadata.version(hook.package)
    except metadata.PackageNotFoundError:
        return [f"{head}: {hook.package} is not installed"]
    if installed != hook.version:
        found.append(
            f"{head}: {installed} is installed; re-check it, run {hook.tests or 'the tests'}"
        )
    try:
        obj = _resolve(hook.target)
    except (ImportError, AttributeError) as e:
        return [*found, f"{head}: the target is gone in {hook.package} {installed} ({e})"]
    missing = [m for m in hook.members if not _has_member(obj, m)]
    if missing:
        found.append(f"{head}: {', '.join(missing)} missing in {hook.package} {installed}")
    return found
