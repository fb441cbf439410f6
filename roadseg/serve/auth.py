"""The API key of a request: the one reader the HTTP guard and the WebSocket stream share."""

from __future__ import annotations


def read_api_key(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(key, problem): the key from exactly one `X-API-Key` or `Authorization: Bearer` header.

    The BentoML clients send `token=` as `Authorization: Bearer`; curl users send `X-API-Key`.
    Two key headers are refused rather than guessing which one counts.
    """
    keys = [v for k, v in headers if k.lower() == b"x-api-key"]
    bearer = [
        v[7:].strip()
        for k, v in headers
        if k.lower() == b"authorization" and v[:7].lower() == b"bearer "
    ]
    given = keys + bearer
    if len(given) > 1:
        return None, "send the API key once (one X-API-Key or one Authorization: Bearer header)"
    if not given:
        return None, "missing or wrong X-API-Key header"
    return given[0].decode("latin-1"), None
