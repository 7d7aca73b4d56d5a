"""Dashboard links: tokens that open one room (or every room) until they expire, and the CLI that mints them."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from consumers.access import Grant, Refused, Signer, check
from consumers.dashboard.links import main
from consumers.dashboard.settings import get_settings
from kernel.settings import ConfigError

KEY = b"unit-test-dashboard-key-0123456789"
NOW = 1_700_000_000.0


def signer(now: float = NOW) -> Signer:
    return Signer(KEY, clock=lambda: now)


def test_a_room_token_opens_that_room_until_it_expires() -> None:
    token = signer().mint("room-1", 3600)
    assert signer(NOW + 3599).verify(token) == Grant("room-1", int(NOW) + 3600)
    with pytest.raises(Refused, match="expired") as exc:
        signer(NOW + 3600).verify(token)
    assert exc.value.status == 401


def test_a_host_token_opens_every_room_and_a_room_token_only_its_own() -> None:
    host = signer().verify(signer().mint(None, 60))
    assert host.allows(None) and host.allows("any/room")
    room = signer().verify(signer().mint("a/b é", 60))  # any characters
    assert room.allows("a/b é") and not room.allows("a/b") and not room.allows(None)
    with pytest.raises(Refused) as exc:
        check(room, "other")
    assert exc.value.status == 403
    with pytest.raises(Refused) as exc:
        check(None, "a/b é")
    assert exc.value.status == 401


@pytest.mark.parametrize("mutate", [
    lambda raw: raw[:-1] + b"X",                    # another room
    lambda raw: raw[:2] + b"\x7f" + raw[3:],        # a later expiry
    lambda raw: raw[:1] + b"h" + raw[2:26],          # a room token turned into a host token
    lambda raw: raw[:10] + bytes(16) + raw[26:],     # a zero tag
    lambda raw: bytes([2]) + raw[1:],               # an unknown version
    lambda raw: raw[:20],                           # truncated
])
def test_a_changed_token_is_refused(mutate: object) -> None:
    raw = base64.urlsafe_b64decode(signer().mint("room-1", 60) + "==")
    forged = base64.urlsafe_b64encode(mutate(raw)).rstrip(b"=").decode()  # type: ignore[operator]
    with pytest.raises(Refused, match="invalid token"):
        signer().verify(forged)


@pytest.mark.parametrize("token", ["", "!", "a", "=" * 8, "A" * 10_000, "\u00e9" * 40])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(Refused) as exc:
        signer().verify(token)
    assert exc.value.status == 401


def test_another_key_opens_nothing_and_keys_are_never_shown() -> None:
    token = Signer(b"some-other-dashboard-key-xxxxxxxx", clock=lambda: NOW).mint("room-1", 60)
    with pytest.raises(Refused):
        signer().verify(token)
    assert KEY.decode() not in repr(signer())
    with pytest.raises(ValueError):
        Signer(b"short")


def test_the_key_setting_is_secret_and_long_enough() -> None:
    s = get_settings({"FLASHSALE_DASHBOARD_KEY": "k" * 16})
    assert s.key is not None and s.key.get_secret_value() == "k" * 16 and "k" * 16 not in repr(s)
    assert get_settings({}).key is None
    with pytest.raises(ConfigError, match="FLASHSALE_DASHBOARD_KEY"):
        get_settings({"FLASHSALE_DASHBOARD_KEY": "short"})


def test_the_cli_prints_a_link_the_dashboard_accepts(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLASHSALE_DASHBOARD_KEY", KEY.decode())
    assert main(["--room", "room 1/x", "--hours", "2", "--base-url", "https://live.example/"]) == 0
    url = urlsplit(capsys.readouterr().out.strip())
    assert (url.scheme, url.netloc) == ("https", "live.example")
    assert unquote(url.path) == "/rooms/room 1/x" and url.path == "/rooms/room%201%2Fx"
    grant = Signer(KEY).verify(parse_qs(url.query)["t"][0])
    assert grant.room_id == "room 1/x"
    assert main(["--all-rooms"]) == 0
    url = urlsplit(capsys.readouterr().out.strip())
    assert url.netloc == "127.0.0.1:8090" and url.path == "/"
    assert Signer(KEY).verify(parse_qs(url.query)["t"][0]).room_id is None


def test_the_cli_needs_the_key_and_sane_hours(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FLASHSALE_DASHBOARD_KEY", raising=False)
    assert main(["--room", "r"]) == 2
    assert "FLASHSALE_DASHBOARD_KEY" in capsys.readouterr().err
    monkeypatch.setenv("FLASHSALE_DASHBOARD_KEY", KEY.decode())
    for hours in ("0", "-1", "100000"):
        assert main(["--room", "r", "--hours", hours]) == 2
    with pytest.raises(SystemExit):
        main([])  # --room or --all-rooms
