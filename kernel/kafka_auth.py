"""How every Kafka client of flashsale authenticates: one description, one set of client options.

Production brokers identify each deployable by its own SASL user (``worker``, ``gateway``, ...),
and Kafka ACLs decide what that user may read and write (deploy/, docs/SECURITY.md). The settings
(``FLASHSALE_KAFKA_SECURITY_PROTOCOL``, ``_SASL_MECHANISM``, ``_USERNAME``, ``_PASSWORD``,
``_CA_FILE``) are turned into aiokafka keyword arguments here; the worker turns the same object
into Faust credentials (``streams.app``). Nothing here opens a connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import SecretStr

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaAuth:
    """A Kafka client's security settings. ``PLAINTEXT`` (the default, and the embedded broker) sends
    nothing; the ``SASL_*`` protocols need a username and a password."""

    protocol: Protocol = "PLAINTEXT"
    mechanism: Mechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"security protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"SASL mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if self.sasl and (not self.username or self.password is None or not self.password.get_secret_value()):
            raise ValueError(f"{self.protocol} needs a username and a password")
        if self.ca_file is not None and not self.tls:
            raise ValueError(f"a CA file is only used with SSL or SASL_SSL, not {self.protocol}")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (system CAs, or ``ca_file``); None without TLS. Reads the CA file."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / the admin client."""
        if self.protocol == "PLAINTEXT":
            return {}
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.password is not None
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password.get_secret_value())
        return out

    def describe(self) -> str:
        """Where it authenticates as whom, without the password (for start-up logs)."""
        if not self.sasl:
            return self.protocol
        return f"{self.protocol} {self.mechanism} as {self.username}"
