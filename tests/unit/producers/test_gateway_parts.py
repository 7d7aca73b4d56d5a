"""Gateway parts without a broker: rate limiter, settings, auth, content checks, CLI, sold-out cache failure."""

from __future__ import annotations

import ipaddress
from unittest import mock

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from flashsale.embedded import free_port
from kernel.settings import ConfigError
from producers.gateway.__main__ import main
from producers.gateway.http import ApiError, Authenticator, check_content_type, client_ip, parse_json
from producers.gateway.ratelimit import TokenBucketLimiter, retry_after_header
from producers.gateway.scopes import DEFAULT_SCOPES, SCOPES, Principal
from producers.gateway.settings import GatewaySettings, get_settings
from producers.gateway.state import SoldOutCache
from schemas.events import OUTPUT_TYPES

TOKEN = "a-long-enough-token-1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=10, burst=20, clock=clock)
    assert limiter.take("a", 15) == 0
    assert limiter.take("a", 10) == pytest.approx(0.5)  # 5 left, 10 needed at 10/s
    assert limiter.take("b", 20) == 0  # clients are independent
    clock.now += 0.5
    assert limiter.retry_after("a", 10) == 0 and limiter.take("a", 10) == 0
    assert limiter.retry_after("a", 1) == pytest.approx(0.1)


def test_batch_larger_than_burst_passes_once_then_pays() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate=10, burst=20, clock=clock)
    assert limiter.take("a", 50) == 0  # a full bucket admits it...
    assert limiter.retry_after("a", 1) == pytest.approx(3.1)  # ...and it is paid back: -30 + 1 at 10/s
    clock.now += 5
    assert limiter.take("a", 50) == 0


def test_disabled_limiter_and_pruning() -> None:
    assert TokenBucketLimiter(rate=0, burst=1).take("a", 10**6) == 0
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1, burst=1, clock=clock, max_clients=10)
    for i in range(100):
        limiter.take(f"c{i}")
        clock.now += 0.01
    assert len(limiter) <= 10
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"


def test_pruning_never_forgives_a_debt() -> None:
    """Issue 12, item 10: a client that overdrew its bucket must not be reset by pruning the table."""
    clock = Clock()
    limiter = TokenBucketLimiter(rate=1, burst=10, clock=clock, max_clients=4)
    assert limiter.take("debtor", 50) == 0  # a full bucket admits a big batch, which is then owed: 10 - 50
    for i in range(20):  # many new clients fill the table and force pruning
        limiter.take(f"c{i}")
        clock.now += 0.01
    assert len(limiter) <= 4
    assert limiter.retry_after("debtor", 1) > 30  # still owes ~41 tokens at 1/s
    for i in range(3):  # a table full of debtors: a new client waits instead of erasing one of them
        limiter.take(f"d{i}", 50)
    assert limiter.take("newcomer", 1) > 0 and limiter.retry_after("debtor", 1) > 30


def test_gateway_settings() -> None:
    s = get_settings({})
    assert (s.host, s.port, s.auth_enabled, s.max_body_bytes, s.decision_timeout_ms) == (
        "127.0.0.1", 8080, False, 1_048_576, 2000)
    assert s.rate_burst == int(s.rate_limit * 2)
    s = get_settings({"FLASHSALE_GATEWAY_TOKEN": f"{TOKEN}, other-token-0123456789", "FLASHSALE_GATEWAY_PORT": "0",
                      "FLASHSALE_GATEWAY_RATE_LIMIT": "50", "FLASHSALE_REDIS_URL": "redis://:pw@h:1/0",
                      "FLASHSALE_TOPIC_PREFIX": "x.", "FLASHSALE_PRODUCER_LINGER_MS": "1"})
    assert s.credentials() == ((TOKEN, DEFAULT_SCOPES), ("other-token-0123456789", DEFAULT_SCOPES))
    assert s.rate_burst == 100
    assert s.publisher.topic_prefix == "x." and s.publisher.linger_ms == 1
    assert TOKEN not in repr(s) and "pw" not in repr(s)
    with pytest.raises(ConfigError, match="at least 16"):
        get_settings({"FLASHSALE_GATEWAY_TOKEN": "short"})
    with pytest.raises(ConfigError, match="FLASHSALE_GATEWAY_MAX_BODY_BYTES"):
        get_settings({"FLASHSALE_GATEWAY_MAX_BODY_BYTES": "10"})


def test_token_syntax_gives_scopes_and_a_plain_token_keeps_engagement_and_orders() -> None:
    s = get_settings({"FLASHSALE_GATEWAY_TOKEN": f"{TOKEN}, pay-token-0123456789=payments, "
                      "host-token-0123456789=control+engagement, padded-token-012345=="})
    assert s.credentials() == ((TOKEN, frozenset({"engagement", "orders"})),
                               ("pay-token-0123456789", frozenset({"payments"})),
                               ("host-token-0123456789", frozenset({"control", "engagement"})),
                               ("padded-token-012345==", DEFAULT_SCOPES))  # base64 padding is not a scope list
    with pytest.raises(ConfigError, match="unknown scope 'contrl'") as info:
        get_settings({"FLASHSALE_GATEWAY_TOKEN": "long-enough-token-123=contrl"})
    assert "long-enough-token-123" not in str(info.value)  # errors never quote a token
    with pytest.raises(ConfigError, match="at least 16"):
        get_settings({"FLASHSALE_GATEWAY_TOKEN": "short=control"})
    assert get_settings({}).anonymous_scopes == ("engagement", "orders")
    assert get_settings({"FLASHSALE_GATEWAY_ANONYMOUS_SCOPES": "control+orders"}).anonymous_scopes == (
        "orders", "control")
    assert get_settings({"FLASHSALE_GATEWAY_ANONYMOUS_SCOPES": "none"}).anonymous_scopes == ()


def test_principal_refuses_outputs_always_and_types_outside_its_scopes() -> None:
    plain = Principal("token:0", DEFAULT_SCOPES)
    everything = Principal("token:1", frozenset(SCOPES))
    for type_ in ("viewer.liked", "cart.added", "product.clicked", "order.placed", "order.cancelled"):
        assert plain.refusal(type_) is None
    for type_ in ("sale.opened", "sale.closed", "stock.adjusted"):
        assert plain.refusal(type_) == ("missing_scope", f"{type_} needs the control scope; this caller has "
                                                          "engagement+orders")
    assert plain.refusal("order.paid") == ("missing_scope", "order.paid needs the payments scope; this caller "
                                                             "has engagement+orders")
    for type_ in OUTPUT_TYPES:
        reason, message = everything.refusal(type_) or ("", "")
        assert reason == "output_type" and "pipeline output" in message
    assert Principal(None, frozenset({"payments"})).refusal("order.cancelled") is None


def test_authenticator() -> None:
    auth = Authenticator(((TOKEN, DEFAULT_SCOPES), ("second-token-0123456789", frozenset({"control"}))))
    assert auth.check(make_mocked_request("GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})) == Principal(
        "token:0", DEFAULT_SCOPES)
    assert auth.check(make_mocked_request("GET", "/", headers={"Authorization": "bearer second-token-0123456789"})
                      ) == Principal("token:1", frozenset({"control"}))
    for header in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {TOKEN}"},
                   {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        with pytest.raises(ApiError) as info:
            auth.check(make_mocked_request("GET", "/", headers=header))
        assert info.value.status == 401 and "WWW-Authenticate" in info.value.headers
    assert TOKEN not in repr(auth)
    assert Authenticator(()).check(make_mocked_request("GET", "/")) == Principal(None, DEFAULT_SCOPES)


@pytest.mark.parametrize(("ctype", "ok"), [(None, True), ("application/json", True),
                                           ("application/json; charset=utf-8", True),
                                           ("application/cloudevents+json", True), ("text/plain", False),
                                           ("application/x-www-form-urlencoded", False)])
def test_content_type(ctype: str | None, ok: bool) -> None:
    request = make_mocked_request("POST", "/", headers={"Content-Type": ctype} if ctype else {})
    if ok:
        check_content_type(request)
    else:
        with pytest.raises(ApiError) as info:
            check_content_type(request)
        assert info.value.status == 415


def test_parse_json_and_client_ip() -> None:
    assert parse_json(b'[{"a": 1}]') == [{"a": 1}]
    for raw in (b"", b"  ", b"{", b"\xff"):
        with pytest.raises(ApiError) as info:
            parse_json(raw)
        assert info.value.status == 400 and info.value.code == "malformed_json"


def _from(peer: str, *xff: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000)
    headers = CIMultiDict(("X-Forwarded-For", v) for v in xff)
    return make_mocked_request("GET", "/", headers=headers, transport=transport)


def test_forwarded_for_is_believed_only_from_trusted_proxies_right_to_left() -> None:
    """Issue 12, item 10: the client is the right-most hop that is not a trusted proxy."""
    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert client_ip(_from("203.0.113.7", "1.2.3.4"), proxies) == "203.0.113.7"  # untrusted peer: XFF ignored
    assert client_ip(_from("203.0.113.7", "1.2.3.4"), ()) == "203.0.113.7"  # nothing trusted
    assert client_ip(_from("10.0.0.1", "1.2.3.4"), proxies) == "1.2.3.4"
    # a client that prepends a forged hop is still keyed by the address the proxy saw
    assert client_ip(_from("10.0.0.1", "6.6.6.6, 198.51.100.2, 10.0.0.5"), proxies) == "198.51.100.2"
    assert client_ip(_from("10.0.0.1", "6.6.6.6", "198.51.100.2"), proxies) == "198.51.100.2"  # two headers
    assert client_ip(_from("::1", "10.0.0.3, 10.0.0.2"), proxies) == "10.0.0.3"  # all trusted: the left-most
    assert client_ip(_from("10.0.0.1"), proxies) == "10.0.0.1"
    assert client_ip(_from("10.0.0.1", "garbage, 10.0.0.2"), proxies) == "garbage"
    s = get_settings({"FLASHSALE_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert s.proxies() == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.1/32"))
    legacy = get_settings({"FLASHSALE_GATEWAY_TRUST_FORWARDED": "true"}).proxies()  # the old flag: loopback
    assert client_ip(_from("127.0.0.1", "1.2.3.4"), legacy) == "1.2.3.4"
    assert client_ip(_from("192.0.2.9", "1.2.3.4"), legacy) == "192.0.2.9"
    with pytest.raises(ConfigError, match="FLASHSALE_GATEWAY_TRUSTED_PROXIES"):
        get_settings({"FLASHSALE_GATEWAY_TRUSTED_PROXIES": "not-an-address"})


def test_cli_help_and_bad_config(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "FLASHSALE_GATEWAY_TOKEN" in capsys.readouterr().out
    monkeypatch.setenv("FLASHSALE_GATEWAY_PORT", "http")
    assert main([]) == 2
    assert "FLASHSALE_GATEWAY_PORT" in capsys.readouterr().err


async def test_sold_out_cache_fails_open_when_redis_is_down() -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        cache = SoldOutCache(client, ttl_s=0.1)
        assert await cache.is_sold_out("s") is False
        assert await cache.is_sold_out("s") is False
        assert cache.lookups == 2  # failures are not cached
    finally:
        await client.aclose()


def test_defaults_are_the_documented_ones() -> None:
    d = GatewaySettings()
    assert (d.max_body_bytes, d.decision_timeout_ms, d.soldout_cache_ms, d.port) == (1_048_576, 2000, 100, 8080)
