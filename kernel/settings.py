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

Beneath the process environment lies an env file, ``FLASHSALE_ENV_FILE`` (default
``.flashsale/endpoints.env``, the file ``flashsale up`` writes its endpoints to): ``FLASHSALE_X=value``
lines that apply where the environment does not set the variable. So ``flashsale audit`` or
``simulate`` run beside ``flashsale up`` talk to that stack; a variable set in the environment, and a
command-line flag, still win. A missing file is no error. The default file is read for the process
environment only: a plain mapping (tests) reads a file only when it names one itself.
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

DEFAULT_ENV_FILE = ".flashsale/endpoints.env"
ENV_FILE_VAR = "FLASHSALE_ENV_FILE"
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def parse_env_file(text: str, source: str = "env file") -> dict[str, str]:
    """``NAME=value`` lines (``export`` allowed, ``#`` comments and blank lines skipped, one pair of
    matching quotes around the value removed) → {NAME: value}. A line of another shape is a ConfigError."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ConfigError(f"{source} line {number}: expected NAME=value, got {redact_url(line)[:60]!r}")
        name, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def env_file_values(environ: Mapping[str, str], default: str | None = DEFAULT_ENV_FILE) -> dict[str, str]:
    """The FLASHSALE_* pairs of the env file ``environ`` names (``FLASHSALE_ENV_FILE``), else of ``default``;
    {} when the file does not exist. An unreadable or malformed file is a ConfigError naming it."""
    path = environ.get(ENV_FILE_VAR) or default
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{ENV_FILE_VAR}={path!r}: cannot read it: {exc}") from None
    values = parse_env_file(text, f"{ENV_FILE_VAR}={path!r}:")
    return {k: v for k, v in values.items() if k.startswith("FLASHSALE_") and k != ENV_FILE_VAR}


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
    env_file: str = Field(DEFAULT_ENV_FILE, description="file of `FLASHSALE_*=value` lines read beneath the "
                                                         "environment (a variable set wins; missing file = "
                                                         "none); `flashsale up` writes its endpoints there")
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
        """The settings from ``environ`` (``os.environ`` by default) over the env file; unset or empty
        variables keep the default."""
        process = environ is None or environ is os.environ
        env: Mapping[str, str] = os.environ if environ is None else environ
        skip_empty = cls.model_config.get("env_ignore_empty", True)
        given = {k: v for k, v in env.items() if not (skip_empty and v == "")}
        from_file = env_file_values(given, DEFAULT_ENV_FILE if process else None)
        merged = {**{k: v for k, v in from_file.items() if not (skip_empty and v == "")}, **given}
        values = {name: merged[var] for name, var in cls.env_names().items() if var in merged}
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
