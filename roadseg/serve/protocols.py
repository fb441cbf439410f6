"""The one place the service's hooks below the ASGI app are installed: uvicorn's HTTP protocol
(header and send timeouts, parser errors as JSON: `roadseg.serve.httpconn`), BentoML's metrics
labelled by route (same module), and uvicorn's WebSocket protocol (no compression, the stream's
frame limit: `roadseg.serve.wsguard`). BentoML 1.4 has no setting for any of them and builds
`uvicorn.Config` itself after importing the service module, so `bento/service.py` calls
`install_protocol_hooks` there, once. Which library internals this touches, and the versions
it was written against: `roadseg.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable

from roadseg.serve.api import ServingState
from roadseg.serve.httpconn import install_http_guards
from roadseg.serve.wsguard import install_ws_guard


def install_protocol_hooks(state_source: Callable[[], ServingState | None]) -> None:
    """Install every protocol hook (idempotent). `state_source()` gives the worker's live
    serving state, None before the service instance exists: the limits are read from it per
    connection (`limits`, `stream_limits.max_frame_bytes`)."""
    install_http_guards(state_source)
    install_ws_guard(lambda: _frame_limit(state_source()))


def _frame_limit(state: ServingState | None) -> int | None:
    return state.stream_limits.max_frame_bytes if state is not None else None
