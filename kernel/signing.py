"""Output signatures: the HMAC-SHA256 header workers put on each record they produce, and its check."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

HEADER: Final = "fs-sig"  # the record header's name
VERSION: Final = "v1"
MIN_KEY_CHARS: Final = 32
_KID_CONTEXT: Final = b"flashsale-output-key\x00"

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


def split_keys(secret: str) -> list[str]:
    """``"k1,k2"`` → ``["k1", "k2"]``: the first signs, all verify (rotation); blanks dropped."""
    return [k.strip() for k in secret.split(",") if k.strip()]


def key_id(key: str) -> str:
    """A short public name for a key (8 hex digits of a hash): which key signed, never the key."""
    return hashlib.sha256(_KID_CONTEXT + key.encode()).hexdigest()[:8]


class OutputKeys:
    """Signs with the first key and verifies with any of them.

    The MAC covers ``v1``, the logical topic and the record value (``v1\\0<topic>\\0<value>``), so a
    signed record cannot be replayed onto another output topic. The header value is
    ``v1:<key id>:<64 hex digits>``, ASCII. One MAC per record (a record carries up to 1000 events).
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("no signing key")
        if any(len(k) < MIN_KEY_CHARS for k in keys):
            raise ValueError(f"each signing key must have at least {MIN_KEY_CHARS} characters")
        self._keys = {key_id(k): k.encode() for k in keys}
        self._signing_id = key_id(keys[0])
        # (key id, topic) → an HMAC already fed the prefix; copied per record
        self._bases: dict[tuple[str, str], hmac.HMAC] = {}

    @classmethod
    def parse(cls, secret: str | None) -> OutputKeys | None:
        """From the FLASHSALE_OUTPUT_SIGNING_KEY value; None when unset (outputs are not signed)."""
        if secret is None or not split_keys(secret):
            return None
        return cls(split_keys(secret))

    @property
    def signing_key_id(self) -> str:
        return self._signing_id

    def _mac(self, kid: str, topic: str, value: bytes) -> bytes:
        base = self._bases.get((kid, topic))
        if base is None:
            base = self._bases[(kid, topic)] = hmac.new(
                self._keys[kid], f"{VERSION}\x00{topic}\x00".encode(), hashlib.sha256)
        h = base.copy()
        h.update(value)
        return h.digest()

    def header(self, topic: str, value: bytes) -> tuple[str, bytes]:
        """The ``(fs-sig, v1:<kid>:<hex>)`` header for a record of logical ``topic``."""
        mac = self._mac(self._signing_id, topic, value)
        return HEADER, f"{VERSION}:{self._signing_id}:{mac.hex()}".encode()

    def verify(self, topic: str, value: bytes | None, headers: Headers) -> bool:
        """True when the record carries exactly one ``fs-sig`` header made by one of the keys."""
        if value is None or headers is None:
            return False
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        found = [v for k, v in pairs if k == HEADER]
        if len(found) != 1 or not isinstance(found[0], bytes | bytearray):
            return False
        parts = bytes(found[0]).split(b":")
        if len(parts) != 3 or parts[0] != VERSION.encode():
            return False
        kid = parts[1].decode("ascii", "replace")
        if kid not in self._keys:
            return False
        try:
            given = bytes.fromhex(parts[2].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return False
        return hmac.compare_digest(given, self._mac(kid, topic, value))
