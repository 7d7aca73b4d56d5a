"""Kafka client security: one description turned into the options every flashsale Kafka client gets."""

from __future__ import annotations

import ssl

import pytest
from pydantic import SecretStr

from kernel.kafka_auth import KafkaAuth
from producers.decisions import DecisionWaiter
from producers.sdk import Publisher


def test_plaintext_sends_nothing() -> None:
    assert KafkaAuth().aiokafka_kwargs() == {}
    assert KafkaAuth().describe() == "PLAINTEXT"


def test_sasl_scram_options() -> None:
    auth = KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "gateway", SecretStr("pw-1"))
    assert auth.aiokafka_kwargs() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                      "sasl_plain_username": "gateway", "sasl_plain_password": "pw-1"}
    assert "pw-1" not in auth.describe() and "pw-1" not in repr(auth)


def test_sasl_ssl_has_a_verifying_context() -> None:
    opts = KafkaAuth("SASL_SSL", "SCRAM-SHA-256", "worker", SecretStr("pw")).aiokafka_kwargs()
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"protocol": "SASL_PLAINTEXT"}, "needs a username and a password"),
    ({"protocol": "SASL_SSL", "username": "u", "password": SecretStr("")}, "needs a username and a password"),
    ({"protocol": "TLS"}, "is not one of"),
    ({"protocol": "SASL_PLAINTEXT", "mechanism": "GSSAPI", "username": "u", "password": SecretStr("p")},
     "is not one of"),
    ({"ca_file": "/etc/ca.pem"}, "only used with SSL"),
])
def test_bad_combinations_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaAuth(**kwargs)  # type: ignore[arg-type]


def test_every_client_gets_the_options() -> None:
    auth = KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "gateway", SecretStr("pw-1"))
    pub = Publisher("127.0.0.1:1", kafka_auth=auth)
    assert pub._options["sasl_plain_username"] == "gateway"  # what AIOKafkaProducer is built with
    waiter = DecisionWaiter("127.0.0.1:1", "t", kafka_auth=auth)
    assert waiter._kafka_options == auth.aiokafka_kwargs()


def test_settings_name_the_missing_credentials() -> None:
    from kernel.settings import ConfigError, FlashsaleSettings

    with pytest.raises(ConfigError, match="FLASHSALE_KAFKA_PASSWORD.*needs FLASHSALE_KAFKA_USERNAME"):
        FlashsaleSettings.from_env({"FLASHSALE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FLASHSALE_KAFKA_USERNAME": "w"})
    with pytest.raises(ConfigError, match="FLASHSALE_KAFKA_SECURITY_PROTOCOL"):
        FlashsaleSettings.from_env({"FLASHSALE_KAFKA_SECURITY_PROTOCOL": "TLS"})
    s = FlashsaleSettings.from_env({"FLASHSALE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                    "FLASHSALE_KAFKA_USERNAME": "worker", "FLASHSALE_KAFKA_PASSWORD": "pw-9"})
    assert s.kafka_auth.aiokafka_kwargs()["sasl_plain_username"] == "worker"
    assert "pw-9" not in repr(s)
    assert FlashsaleSettings().kafka_auth.aiokafka_kwargs() == {}


def test_the_worker_gives_faust_the_same_credentials() -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.settings import WorkerSettings

    plain = WorkerSettings().faust_options()
    assert "broker_credentials" not in plain
    s = WorkerSettings.from_env({"FLASHSALE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                 "FLASHSALE_KAFKA_USERNAME": "worker", "FLASHSALE_KAFKA_PASSWORD": "pw-w"})
    opts = credentials_to_aiokafka_auth(s.faust_options()["broker_credentials"])  # what Faust's driver passes
    assert {k: v for k, v in opts.items() if v is not None} == s.kafka_auth.aiokafka_kwargs()


def test_the_gateway_waits_for_decisions_as_its_own_user() -> None:
    from producers.gateway.settings import GatewaySettings

    s = GatewaySettings.from_env({"FLASHSALE_GATEWAY_TOKEN": "t" * 32, "FLASHSALE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                  "FLASHSALE_KAFKA_USERNAME": "gateway", "FLASHSALE_KAFKA_PASSWORD": "pw-g"})
    assert s.publisher.kafka_auth.username == "gateway"
    assert Publisher.from_settings(s.publisher)._options["security_protocol"] == "SASL_SSL"
