"""HTTP plumbing shared by the gateway's handlers: JSON errors, bounded body reads, auth, client keys."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import orjson
from aiohttp import web

from producers.sdk import ItemError

JSON_TYPES = ("application/json",)
MAX_REPORTED_ERRORS = 100


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine code, a human message, optional item errors.
    ``reason`` is the metric label for flashsale_gateway_rejected_total (None: not a rejection)."""

    def __init__(self, status: int, code: str, message: str, *, reason: str | None = None,
                 errors: list[ItemError] | None = None, headers: dict[str, str] | None = None,
                 close: bool = False, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        self.errors = errors
        self.headers = headers or {}
        self.close = close
        self.extra = extra or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "message": self.message, **self.extra}
        if self.errors is not None:
            body["errors"] = [e.to_dict() for e in self.errors[:MAX_REPORTED_ERRORS]]
            body["invalid"] = len(self.errors)
        resp = json_response(body, status=self.status, headers=self.headers)
        if self.close:
            # The unread rest of the body would otherwise be drained (lingering) before the next request.
            resp.force_close()
        return resp


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def check_content_type(request: web.Request) -> None:
    """415 unless the body is declared JSON (a missing Content-Type is read as JSON)."""
    raw = request.headers.get("Content-Type")
    if raw is None:
        return
    mime = raw.split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise ApiError(415, "unsupported_media_type", f"expected Content-Type: application/json, got {mime or 'none'}",
                   reason="unsupported_media_type", close=True)


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The body, refusing early by Content-Length and while reading (413), and bounding the time a slow
    client may take to send it (408)."""
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "payload_too_large", f"body of {length} bytes exceeds the limit of {limit} bytes",
                       reason="too_large", close=True)
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                buf += chunk
                if len(buf) > limit:
                    raise ApiError(413, "payload_too_large", f"body exceeds the limit of {limit} bytes",
                                   reason="too_large", close=True)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g}s",
                       reason="body_timeout", close=True) from None
    return bytes(buf)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "malformed_json", "empty body; expected JSON", reason="malformed_json",
                       errors=[ItemError(-1, "", "empty body")])
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", "the body is not valid JSON", reason="malformed_json",
                       errors=[ItemError(-1, "", str(exc))]) from None


class Authenticator:
    """Bearer tokens compared in constant time; the client key is the token's index, never the token."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"Authenticator(tokens={len(self._digests)})"

    def check(self, request: web.Request) -> int | None:
        """The matching token's index (None when auth is off); raise 401 otherwise."""
        if not self._digests:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(401, "unauthorized", "missing bearer token", reason="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer realm="flashsale"'})
        digest = hashlib.sha256(credentials.strip().encode()).digest()
        match = None
        for i, known in enumerate(self._digests):  # compare against all: timing says nothing about which
            if hmac.compare_digest(digest, known) and match is None:
                match = i
        if match is None:
            raise ApiError(401, "unauthorized", "invalid bearer token", reason="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer realm="flashsale", error="invalid_token"'})
        return match


def client_ip(request: web.Request, trust_forwarded: bool) -> str:
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded:
            return forwarded.split(",", 1)[0].strip()
    return request.remote or "unknown"
