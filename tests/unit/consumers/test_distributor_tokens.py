"""Distributor tokens (issue 16): they open one distributor's ledger in one room and nothing else."""

from __future__ import annotations

import base64

import pytest

from consumers.access import Refused, Signer

KEY = b"distributor-token-key-0123456789"


def test_a_distributor_token_round_trips_and_opens_only_its_ledger() -> None:
    signer = Signer(KEY, clock=lambda: 1000.0)
    grant = signer.verify(signer.mint("room-1", 60, distributor_id="kol-a"))
    assert (grant.room_id, grant.distributor_id, grant.expires_at) == ("room-1", "kol-a", 1060)
    assert grant.allows_ledger("room-1", "kol-a")
    assert not grant.allows_ledger("room-1", "kol-b") and not grant.allows_ledger("room-2", "kol-a")
    assert not grant.allows("room-1") and not grant.allows(None), "no room view, no room list"


def test_room_and_host_tokens_open_every_distributor_of_their_rooms() -> None:
    signer = Signer(KEY)
    room = signer.verify(signer.mint("room-1", 60))
    host = signer.verify(signer.mint(None, 60))
    assert room.allows_ledger("room-1", "anyone") and not room.allows_ledger("room-2", "anyone")
    assert host.allows_ledger("room-2", "anyone")


def test_a_distributor_id_cannot_be_moved_into_the_room() -> None:
    """The room is length-prefixed: "ro" + "om-1/kol" cannot be re-read as another split without the MAC."""
    signer = Signer(KEY)
    raw = bytearray(base64.urlsafe_b64decode(signer.mint("room-1", 60, distributor_id="kol") + "=="))
    raw[10 + 16] = 2  # the room length byte, after version, kind, expiry (10 bytes) and the 16-byte tag
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(Refused) as err:
        signer.verify(forged)
    assert err.value.status == 401


def test_a_distributor_token_needs_a_room() -> None:
    with pytest.raises(ValueError, match="needs a room"):
        Signer(KEY).mint(None, 60, distributor_id="kol")
    with pytest.raises(ValueError, match="needs a room"):
        Signer(KEY).mint("room", 60, distributor_id="")
