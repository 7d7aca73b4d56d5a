"""HTTP plumbing shared by the gateway's handlers: JSON errors, bounded body reads, auth, client keys."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from typing import Any

import orjson
from aiohttp import web

from producers.gateway.scopes import DEFAULT_SCOPES, Principal
from producers.gateway.settings import Network
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
    if request.content.is_eof():  # the whole body came with the headers (most orders): nothing to wait for
        whole = await request.content.read()
        if len(whole) > limit:
            raise ApiError(413, "payload_too_large", f"body exceeds the limit of {limit} bytes",
                           reason="too_large", close=True)
        return whole
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
    """Bearer tokens compared in constant time, each with its scopes; the caller's rate-limit key is the
    token's position, never the token. With no tokens every caller is anonymous, with ``anonymous`` scopes."""

    def __init__(self, credentials: tuple[tuple[str, frozenset[str]], ...],
                 anonymous: frozenset[str] = DEFAULT_SCOPES) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t, _ in credentials]
        self._principals = [Principal(f"token:{i}", scopes) for i, (_, scopes) in enumerate(credentials)]
        self._anonymous = Principal(None, anonymous)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"Authenticator(tokens={len(self._digests)})"

    def check(self, request: web.Request) -> Principal:
        """The caller (anonymous when auth is off); raise 401 otherwise."""
        if not self._digests:
            return self._anonymous
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
        return self._principals[match]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().removeprefix("[").split("]", 1)[0])
    except ValueError:
        return None


def client_ip(request: web.Request, proxies: tuple[Network, ...] = ()) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy; then the right-most
    ``X-Forwarded-For`` hop that is not a trusted proxy (hops left of it are the client's to invent)."""
    peer = request.remote or "unknown"
    if not proxies:
        return peer

    def trusted(text: str) -> bool:
        addr = _address(text)
        return addr is not None and any(addr in net for net in proxies)

    if not trusted(peer):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop[:64]  # an unparsable hop is the client's claim: a key, bounded, never trusted
    return hops[0][:64] if hops else peer
