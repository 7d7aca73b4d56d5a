"""Settings: one validated, frozen pydantic-settings model per deployable, read from ``FLASHSALE_*`` variables.

``FlashsaleSettings`` holds what every process shares (broker, Redis, topics, log level), each default
and bound written once; the deployables' models extend it (``streams.settings.WorkerSettings``,
``producers.settings.PublisherSettings`` and the gateway's and simulator's models on top of it,
``consumers.dashboard.settings.DashboardSettings``).

A field's variable is ``FLASHSALE_<FIELD>``, or its ``validation_alias`` when the name differs. The
environment is read in one place, :meth:`FlashsaleSettings.from_env`, from a mapping (``os.environ``
by default, a plain dict in tests): building a model directly (tests, ``updated``) never picks up
stray variables. Command-line flags go through the same validation with :meth:`FlashsaleSettings.updated`.
A bad value raises :class:`ConfigError` with one line naming the variable (or flag) and the problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Self, get_args

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kernel.kafka_auth import KafkaAuth
from kernel.kafka_auth import Mechanism as KafkaMechanism
from kernel.kafka_auth import Protocol as KafkaProtocol
from kernel.signing import OutputKeys


class ConfigError(ValueError):
    """A FLASHSALE_* variable (or a command-line flag) holds a value that cannot be used."""


def bootstrap_servers(broker_url: str) -> str:
    """``kafka://h1:9092;h2:9092`` or ``h1:9092,h2:9092`` → ``h1:9092,h2:9092``."""
    out = []
    for part in broker_url.replace(";", ",").split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            out.append(part if ":" in part else f"{part}:9092")
    if not out:
        raise ConfigError(f"broker URL {broker_url!r} names no host")
    return ",".join(out)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


# Booleans from the environment: true/false, 1/0, yes/no, on/off, any case, surrounding blanks ignored.
Flag = Annotated[bool, BeforeValidator(_strip)]

_USERINFO = re.compile(r"(://[^/@]*?:)[^/@]*@")


def redact_url(url: str) -> str:
    """``redis://:pw@host:6379/0`` → ``redis://:***@host:6379/0``: where it points, not the password."""
    return _USERINFO.sub(r"\1***@", url)


class FlashsaleSettings(BaseSettings):
    """What every deployable shares. Subclasses add their own fields; defaults and bounds live on the fields."""

    model_config = SettingsConfigDict(
        env_prefix="FLASHSALE_", case_sensitive=True, env_ignore_empty=True, env_file=None,
        frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True)

    broker_url: str = Field("kafka://127.0.0.1:9092",
                            description="Kafka bootstrap servers, `kafka://h1:9092;h2:9092` or `h1:9092,h2:9092`")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (any node of a cluster)")
    redis_cluster: Flag = Field(False, description="talk Redis Cluster protocol")
    topic_prefix: str = Field("flashsale.", description="prefix of every topic name")
    partitions: int = Field(8, ge=1, le=1024, description="partitions of the keyed topics when created")
    replication: int = Field(1, ge=1, le=10, description="replication factor when created (3 in production)")
    auto_create_topics: Flag = Field(True, description="create missing topics at start")
    log_level: str = Field("info", description="log level")
    output_signing_key: SecretStr | None = Field(
        None, description="HMAC key(s) of the workers' outputs, comma-separated, 32+ characters each: workers "
                          "sign with the first, readers drop records no key signed; unset = not signed")

    kafka_security_protocol: KafkaProtocol = Field(
        "PLAINTEXT", description="Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: KafkaMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
    kafka_username: str | None = Field(None, description="SASL user of this process (one per role: docs/SECURITY.md)")
    kafka_password: SecretStr | None = Field(None, validate_default=True, description="SASL password")
    kafka_ca_file: str | None = Field(
        None, description="CA certificates (PEM) for SSL / SASL_SSL; unset = the system's")

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the constructor is given: from_env reads the environment (a mapping) itself.
        return (init_settings,)

    @field_validator("broker_url")
    @classmethod
    def _broker_names_a_host(cls, value: str) -> str:
        try:
            bootstrap_servers(value)
        except ConfigError:
            raise ValueError("names no host") from None
        return value

    @field_validator("output_signing_key")
    @classmethod
    def _signing_keys_are_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            OutputKeys.parse(value.get_secret_value())
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("kafka_password")
    @classmethod
    def _sasl_has_credentials(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        protocol = info.data.get("kafka_security_protocol", "PLAINTEXT")
        if str(protocol).startswith("SASL_") and (
                not info.data.get("kafka_username") or value is None or not value.get_secret_value()):
            raise ValueError(f"{protocol} needs FLASHSALE_KAFKA_USERNAME and FLASHSALE_KAFKA_PASSWORD")
        return value

    @property
    def kafka_auth(self) -> KafkaAuth:
        """How this process's Kafka clients authenticate (``kernel.kafka_auth``)."""
        return KafkaAuth(self.kafka_security_protocol, self.kafka_sasl_mechanism, self.kafka_username,
                         self.kafka_password, self.kafka_ca_file)

    @property
    def output_keys(self) -> OutputKeys | None:
        """The keys that sign (workers) and verify (readers) outputs; None when none is configured."""
        key = self.output_signing_key
        return None if key is None else OutputKeys.parse(key.get_secret_value())

    @property
    def bootstrap(self) -> str:
        return bootstrap_servers(self.broker_url)

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name → the variable it is read from."""
        prefix = cls.model_config.get("env_prefix", "")
        return {name: f.validation_alias if isinstance(f.validation_alias, str) else prefix + name.upper()
                for name, f in cls.model_fields.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from ``environ`` (``os.environ`` by default); unset or empty variables keep the default."""
        env = os.environ if environ is None else environ
        skip_empty = cls.model_config.get("env_ignore_empty", True)
        values = {name: env[var] for name, var in cls.env_names().items()
                  if var in env and not (skip_empty and env[var] == "")}
        return cls._build(values, cls.env_names())

    def updated(self, changes: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> Self:
        """A validated copy with ``changes`` (``None`` values are ignored: a flag that was not given).

        ``labels`` names where a changed value came from (``{"port": "--port"}``) for error messages.
        Derived defaults (the gateway's burst from its rate) follow the new values unless set themselves.
        """
        given = {k: v for k, v in changes.items() if v is not None}
        names = {**self.env_names(), **{k: (labels or {}).get(k, k) for k in given}}
        return self._build({**self.model_dump(exclude_unset=True), **given}, names)

    @classmethod
    def _build(cls, values: dict[str, Any], names: Mapping[str, str]) -> Self:
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(cls._describe(exc, values, names)) from None

    @classmethod
    def _describe(cls, exc: ValidationError, values: Mapping[str, Any], names: Mapping[str, str]) -> str:
        aliases = {v: k for k, v in cls.env_names().items()}
        problems: dict[str, str] = {}
        for err in exc.errors(include_url=False):
            if err["type"] == "default_factory_not_called" or not err["loc"]:
                continue  # a consequence of another field's error
            field = aliases.get(str(err["loc"][0]), str(err["loc"][0]))
            label = names.get(field, field)
            if label in problems:
                continue
            problem = _problem(err)
            if field in values and not _is_secret(cls.model_fields.get(field)):
                raw = values[field]
                shown = redact_url(raw) if isinstance(raw, str) else raw
                problems[label] = f"{label}={shown!r}: {problem}"
            else:
                problems[label] = f"{label}: {problem}"
        return "; ".join(problems.values()) or str(exc).splitlines()[0]

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # URLs may carry a password (redis://:pw@host): show where they point only. SecretStr hides itself.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) else value


def _is_secret(field: FieldInfo | None) -> bool:
    def has_secret(tp: Any) -> bool:
        return tp is SecretStr or any(has_secret(a) for a in get_args(tp))
    return field is not None and has_secret(field.annotation)


def _problem(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "expected an integer"
    if kind in ("float_parsing", "float_type"):
        return "expected a number"
    if kind in ("bool_parsing", "bool_type"):
        return "expected true or false"
    bounds = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le"),
              "greater_than": (">", "gt"), "less_than": ("<", "lt")}
    if kind in bounds:
        op, key = bounds[kind]
        bound = ctx[key]
        return f"must be {op} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}"
    if kind in ("too_short", "string_too_short"):
        what = "characters" if isinstance(err.get("input"), str | SecretStr) else "items"
        return f"must have at least {ctx['min_length']} {what}"
    if kind in ("too_long", "string_too_long"):
        what = "characters" if isinstance(err.get("input"), str | SecretStr) else "items"
        return f"must have at most {ctx['max_length']} {what}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])
