"""Read-side access: signed, expiring tokens for one room (or every room) of the dashboard and read API, or for
one distributor's commission ledger in one room."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import orjson
from aiohttp import web

VERSION: Final = 1
ROOM: Final = b"r"  # the token opens one room
HOST: Final = b"h"  # the token opens every room and the room list
DISTRIBUTOR: Final = b"d"  # the token opens one distributor's ledger in one room, nothing else
MAC_BYTES: Final = 16  # 128-bit tag: plenty against forgery, keeps links short enough for a phone
_HEAD: Final = struct.Struct(">Bcq")  # version, kind, expiry (epoch seconds)
_DOMAIN: Final = b"flashsale-dashboard-link\x00"
MAX_TOKEN_CHARS: Final = 512


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token opens: ``room_id`` (None: every room) until ``expires_at`` (epoch seconds).
    With ``distributor_id`` it opens that distributor's ledger in ``room_id`` and nothing else."""

    room_id: str | None
    expires_at: int
    distributor_id: str | None = None

    def allows(self, room_id: str | None) -> bool:
        """``room_id`` None asks for every room (the room list): only a host token has that. A
        distributor's token opens no room view (the room's GMV and funnel are the host's)."""
        if self.distributor_id is not None:
            return False
        return self.room_id is None or self.room_id == room_id

    def allows_ledger(self, room_id: str, distributor_id: str) -> bool:
        """A distributor's ledger in a room: the host, the room's token, or that distributor's own token."""
        if self.distributor_id is None:
            return self.room_id is None or self.room_id == room_id
        return self.room_id == room_id and self.distributor_id == distributor_id


GRANT: Final = web.RequestKey("flashsale_grant", Grant)  # set by the middleware for /api/ and /live/


class Refused(Exception):
    """A request the token does not open: 401 (no, bad or expired token) or 403 (another room)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Signer:
    """Mints and checks tokens with one key: base64url(version, kind, expiry, HMAC-SHA256 tag, room)."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the dashboard key must have at least 16 bytes")
        self._key = key
        self._clock = clock

    def __repr__(self) -> str:
        return "Signer(<key hidden>)"

    def _tag(self, kind: bytes, expires_at: int, room: bytes) -> bytes:
        msg = _DOMAIN + _HEAD.pack(VERSION, kind, expires_at) + room
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:MAC_BYTES]

    def mint(self, room_id: str | None, ttl_s: float, distributor_id: str | None = None) -> str:
        """A token for ``room_id`` (None: every room) valid for ``ttl_s`` seconds from now; with
        ``distributor_id``, for that distributor's ledger in ``room_id`` only."""
        if ttl_s <= 0:
            raise ValueError("a token must be valid for a positive time")
        expires_at = int(self._clock() + ttl_s)
        kind, room = (HOST, b"") if room_id is None else (ROOM, room_id.encode())
        if kind == ROOM and not room:
            raise ValueError("a room token needs a room id")
        if distributor_id is not None:
            if kind != ROOM or len(room) > 255 or not distributor_id:
                raise ValueError("a distributor token needs a room id (at most 255 bytes) and a distributor id")
            kind, room = DISTRIBUTOR, bytes([len(room)]) + room + distributor_id.encode()
        raw = _HEAD.pack(VERSION, kind, expires_at) + self._tag(kind, expires_at, room) + room
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def verify(self, token: str) -> Grant:
        """The grant of ``token``; raises Refused(401) for a malformed, forged or expired token."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Refused(401, "invalid token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise Refused(401, "invalid token") from None
        if len(raw) < _HEAD.size + MAC_BYTES:
            raise Refused(401, "invalid token")
        version, kind, expires_at = _HEAD.unpack_from(raw)
        tag, room = raw[_HEAD.size:_HEAD.size + MAC_BYTES], raw[_HEAD.size + MAC_BYTES:]
        if version != VERSION or kind not in (ROOM, HOST, DISTRIBUTOR) or (kind == HOST) != (not room):
            raise Refused(401, "invalid token")
        if not hmac.compare_digest(tag, self._tag(kind, expires_at, room)):
            raise Refused(401, "invalid token")
        if expires_at <= self._clock():
            raise Refused(401, "token expired")
        try:
            if kind == DISTRIBUTOR:
                size = room[0]
                room_id, distributor = room[1:1 + size].decode(), room[1 + size:].decode()
                if len(room_id) == 0 or len(room) < 1 + size or not distributor:
                    raise Refused(401, "invalid token")
                return Grant(room_id, expires_at, distributor)
            room_only = room.decode() if kind == ROOM else None
        except UnicodeDecodeError:
            raise Refused(401, "invalid token") from None
        return Grant(room_only, expires_at)


def token_of(request: web.Request) -> str | None:
    """The token of a request: ``Authorization: Bearer <token>``, else the ``t`` query parameter
    (EventSource and a link opened on a phone cannot set headers)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("t") or None


def grant_for(signer: Signer, request: web.Request) -> Grant:
    token = token_of(request)
    if token is None:
        raise Refused(401, "a dashboard token is required (a link with ?t=, or Authorization: Bearer)")
    return signer.verify(token)


def check(grant: Grant | None, room_id: str | None) -> None:
    """Raise Refused unless ``grant`` opens ``room_id`` (None: every room)."""
    if grant is None:
        raise Refused(401, "a dashboard token is required")
    if not grant.allows(room_id):
        what = "the room list" if room_id is None else f"room {room_id!r}"
        if grant.distributor_id is not None:
            raise Refused(403, f"this token opens distributor {grant.distributor_id!r}'s ledger only, not {what}")
        raise Refused(403, f"this token is for room {grant.room_id!r}, not {what}")


def ledger_refusal(request: web.Request, room_id: str, distributor_id: str) -> web.Response | None:
    """None when the request's grant opens ``distributor_id``'s ledger in ``room_id``; else the JSON error."""
    grant = request.get(GRANT)
    if grant is None:
        return json_refusal(Refused(401, "a dashboard token is required"))
    if not grant.allows_ledger(room_id, distributor_id):
        return json_refusal(Refused(403, f"this token does not open distributor {distributor_id!r}'s ledger in "
                                         f"room {room_id!r}"))
    return None


def refusal(request: web.Request, room_id: str | None) -> web.Response | None:
    """None when the request's grant opens ``room_id``; else the JSON error to answer with.
    Without a grant (an app that did not install ``middleware``) nothing is open."""
    try:
        check(request.get(GRANT), room_id)
    except Refused as exc:
        return json_refusal(exc)
    return None


def json_refusal(exc: Refused) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="flashsale-dashboard"'
    return web.Response(body=orjson.dumps({"error": exc.message}), status=exc.status,
                        content_type="application/json", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(signer: Signer, prefixes: tuple[str, ...] = ("/api/", "/live/")) -> Callable[..., Awaitable[
        web.StreamResponse]]:
    """Authenticate every request under ``prefixes`` (401 without a valid token) and leave the
    grant on the request; the handlers check the room (403)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(prefixes):
            try:
                request[GRANT] = grant_for(signer, request)
            except Refused as exc:
                return json_refusal(exc)
        return await handler(request)

    return authenticate
