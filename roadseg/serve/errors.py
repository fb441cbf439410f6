"""Errors of the service and the one body every 4xx/5xx answer carries, from the routes, the
guards and the connection layer below the app alike: RFC 9457 problem details,
`application/problem+json`::

    {"type": "about:blank", "title": "Payload Too Large", "status": 413,
     "detail": "request body of 60000000 bytes exceeds the limit of 52428800",
     "error": "too_large"}

`type` is `about:blank` (the HTTP status says what kind of problem it is) and `title` its reason
phrase; `error`, an extension member, is our machine-readable code. `error`, `detail` and
`status` are the members of the body before RFC 9457, kept, so earlier clients read it unchanged.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

# Problem codes of HTTPExceptions raised by the routes (the others are InputError's own).
HTTP_PROBLEMS = {401: "unauthorized", 404: "not_found", 413: "too_large", 503: "not_ready"}


PROBLEM_JSON = "application/problem+json"
_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def problem_body(status: int, problem: str, detail: str) -> dict[str, Any]:
    """The error body: RFC 9457 problem details with our code as the `error` member."""
    return {
        "type": "about:blank",
        "title": _PHRASES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "error": problem,
    }


def problem_response(
    status: int, problem: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one builder of error responses above the connection layer."""
    return JSONResponse(
        problem_body(status, problem, detail), status, headers=headers, media_type=PROBLEM_JSON
    )


class InputError(ValueError):
    """A client-side problem with a request: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, problem: str = "bad_input") -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem

    def to_dict(self) -> dict[str, Any]:
        return problem_body(self.status, self.problem, str(self))


def retry_later(detail: str) -> HTTPException:
    """503 + Retry-After: the request was fine, the server could not finish it now."""
    exc = HTTPException(503, detail, headers={"Retry-After": "1"})
    exc.problem = "unavailable"  # type: ignore[attr-defined]
    return exc


def error_response(exc: Exception) -> JSONResponse:
    """A JSON 4xx/5xx body for an `InputError` or an `HTTPException` (anything else re-raised)."""
    if isinstance(exc, InputError):
        return problem_response(exc.status, exc.problem, str(exc))
    if isinstance(exc, HTTPException):
        problem = getattr(exc, "problem", None) or HTTP_PROBLEMS.get(exc.status_code, "bad_request")
        return problem_response(exc.status_code, problem, str(exc.detail), exc.headers)
    raise exc


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as our JSON error body, naming the fields only (never echoing input)."""
    fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
    detail = f"invalid or missing request field(s): {', '.join(fields)[:300]}"
    return problem_response(422, "bad_request", detail)
