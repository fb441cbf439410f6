"""Errors of the service and the one JSON body every 4xx/5xx answer carries:
`{"error": <problem code>, "detail": <text>, "status": <HTTP status>}`, from the routes, the
guards and the connection layer below the app alike."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

# Problem codes of HTTPExceptions raised by the routes (the others are InputError's own).
HTTP_PROBLEMS = {401: "unauthorized", 404: "not_found", 413: "too_large", 503: "not_ready"}


def problem_body(status: int, problem: str, detail: str) -> dict[str, Any]:
    """The JSON error body."""
    return {"error": problem, "detail": detail, "status": status}


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
        return JSONResponse(exc.to_dict(), exc.status)
    if isinstance(exc, HTTPException):
        problem = getattr(exc, "problem", None) or HTTP_PROBLEMS.get(exc.status_code, "bad_request")
        return JSONResponse(
            problem_body(exc.status_code, problem, str(exc.detail)),
            exc.status_code,
            headers=exc.headers,
        )
    raise exc


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as our JSON error body, naming the fields only (never echoing input)."""
    fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
    detail = f"invalid or missing request field(s): {', '.join(fields)[:300]}"
    return JSONResponse(problem_body(422, "bad_request", detail), 422)
