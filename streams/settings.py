"""Every setting of the service, read once from ``JOURNEY_``-prefixed environment variables.

Defaults point at what ``journey stack up`` starts, so ``journey stack up`` followed by
``journey worker`` works with no configuration at all. Nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.durations import parse_duration
from models.events import parse_timestamp

DEFAULT_MAP = Path(__file__).with_name("default_journey.yaml")
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# Faust reads these from the environment; the worker ignores them (see `faust_variables_set`).
FAUST_VARIABLES = (
    "BROKER_URL", "BROKER_CONSUMER_URL", "BROKER_PRODUCER_URL", "WEB_BIND", "WEB_HOST", "WEB_PORT",
    "PRODUCER_ACKS", "BROKER_COMMIT_INTERVAL", "BROKER_SESSION_TIMEOUT", "CONSUMER_AUTO_OFFSET_RESET",
    "PROCESSING_GUARANTEE", "APP_ENV_PREFIX", "TOPIC_PARTITIONS", "STREAM_BUFFER_MAXSIZE",
)


class Settings(BaseSettings):
    """Configuration of the worker, the CLI and the local stack."""

    model_config = SettingsConfigDict(env_prefix="JOURNEY_", extra="ignore")

    # Where things run
    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # Customer endpoints need `Authorization: Bearer <token>`; without a token the worker only binds
    # to loopback, and only answers customer requests from this machine.
    api_token: SecretStr | None = None
    # Key of the HMAC pseudonyms (logs, dashboard, erasure records, the customer directory); the same on
    # every worker. Unset: a random key is created in `home`/pseudonym.key (fine for one machine).
    pseudonym_key: SecretStr | None = None
    home: Path = Field(default_factory=lambda: Path.home() / ".cache" / "journey-tracker")

    # What the worker reads and writes
    map: Path = DEFAULT_MAP
    app_id: str = "journey-tracker"
    touchpoints_topic: str = "touchpoints"
    dlq_topic: str = "touchpoints-dlq"
    alerts_topic: str = "journey-alerts"
    erasure_topic: str = "journey-erasures"
    # marketing spend per channel and day (models/spend.py), the input of acquisition cost
    spend_topic: str = "marketing-spend"
    topic_partitions: int = Field(default=4, ge=1)
    redis_prefix: str = "jt:v2"

    # How it processes
    # At most this many records per fetch; each partition's share of a fetch is one batch.
    batch_size: int = Field(default=500, ge=1, le=5000)
    max_payload_bytes: int = Field(default=16_384, ge=64)
    max_future_skew: float = 300.0
    # Event times before this are refused (ISO-8601 or epoch ms): history from any date can be replayed.
    min_event_time: str = "1970-01-01T00:00:00Z"
    # Largest order or refund value accepted (in its currency and in `currency`): larger ones are
    # dead-lettered as value_out_of_range, and no total can overflow.
    max_value: float = Field(default=10_000_000.0, gt=0)
    dedupe_window: float = 30 * 86400.0
    path_length: int = Field(default=20, ge=1)
    commit_interval: float = 2.8  # seconds between offset commits (Kafka Streams: commit.interval.ms)
    # A worker that stops heartbeating (crashed) is out of the group after this long, and its partitions move.
    session_timeout: float = Field(default=10.0, ge=6.0)

    # Alerts (event time): watermark = highest event time seen - allowed lateness
    allowed_lateness: float = 600.0
    idle_timeout: float = 60.0  # a partition silent this long (wall clock) lets its watermark follow the clock
    deadline_check_interval: float = 1.0  # how often idle partitions are checked
    # A stall or drop-off already overdue when a (late) event set it waits until the watermark has moved
    # this much further: late history gets the chance to arrive before anyone is alerted.
    late_alert_grace: float = 600.0

    # Anonymous visitors (identity stitching, models/identity.py)
    anonymous_ttl: float = 30 * 86400.0  # a visitor not seen this long (event time) is forgotten
    max_anonymous_ids: int = Field(default=20, ge=1)  # per customer; links beyond it are refused

    # Measuring what alerts are worth (models/uplift.py): per alert type, the share of customers held
    # out (their alerts say "holdout": true), the salt of the hash that picks them (change it for new
    # groups), and how long after an alert (event time) conversion and revenue are counted.
    holdout: str = "drop_off=0.1,stalled_critical_path=0.1,upsell_opportunity=0.1"
    holdout_salt: str = "v1"
    uplift_window: float = 14 * 86400.0

    # Customer value
    currency: str = "EUR"
    fx_rates: str = ""  # "USD=0.92,GBP=1.17": units of `currency` per unit; other currencies go to the DLQ
    clv_windows: str = "30,90,365"  # rolling revenue windows, days
    clv_horizon: float = 365 * 86400.0
    clv_margin: float = Field(default=0.3, ge=0, le=1)
    clv_discount_rate: float = Field(default=0.10, ge=0)
    clv_refit_interval: float = 3600.0
    attribution_lookback: float = 30 * 86400.0
    attribution_half_life: float = 7 * 86400.0

    # Upsell propensity (scoring points, upsell and horizon are in the journey map)
    model_kind: Literal["logistic", "tree"] = "logistic"
    # Key of the HMAC that authenticates model snapshots; every worker needs the same one.
    # Unset: a random key is created in `home`/model.key (fine for workers sharing one machine).
    model_key: SecretStr | None = None
    # The acquisition channels the tracker knows: named in aggregates and one-hot encoded in the propensity
    # features; any other channel (free text from producers) counts as `other`.
    channels_list: str = Field(
        default="search,social,email,display,direct,referral",
        validation_alias=AliasChoices("JOURNEY_CHANNELS", "JOURNEY_MODEL_CHANNELS"),
    )
    model_checkpoint_examples: int = Field(default=1000, ge=1)  # checkpoint after this many examples...
    model_checkpoint_interval: float = 10.0  # ...or this long after the first unsaved one
    model_reload_interval: float = 5.0  # how often scorers look for a newer snapshot
    model_window: int = Field(default=1000, ge=1)  # examples in the "recent" metrics
    # When a positive example reaches the learner: at the end of its horizon like the negatives
    # (default: the model never sees positives sooner than negatives, see README), or as soon as
    # the upsell happens.
    model_learn_positives: Literal["at_horizon", "at_upsell"] = "at_horizon"
    # No upsell_opportunity alerts from a model that has learned fewer examples than this (warm-up).
    model_alert_min_examples: int = Field(default=500, ge=0)

    @field_validator(
        "max_future_skew",
        "dedupe_window",
        "commit_interval",
        "allowed_lateness",
        "idle_timeout",
        "deadline_check_interval",
        "clv_horizon",
        "clv_refit_interval",
        "attribution_lookback",
        "attribution_half_life",
        "model_checkpoint_interval",
        "model_reload_interval",
        "late_alert_grace",
        "session_timeout",
        "anonymous_ttl",
        "uplift_window",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> float:
        if isinstance(value, str | int | float):
            return parse_duration(value)
        raise ValueError("expected a duration such as 90s, 15m, 2h or 3d")

    @field_validator("api_token", "model_key", "pseudonym_key", mode="before")
    @classmethod
    def _token(cls, value: object) -> object:
        return None if value in ("", None) else value  # an empty variable means: no token

    @field_validator("fx_rates")
    @classmethod
    def _rates(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            code, _, rate = part.partition("=")
            try:
                if not code.strip() or float(rate) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{part!r}: expected CODE=RATE with a positive rate, e.g. USD=0.92") from None
        return value

    @field_validator("min_event_time")
    @classmethod
    def _min_event_time(cls, value: str) -> str:
        parsed = parse_timestamp(int(value) if value.lstrip("-").isdigit() else value, min_ms=-(2**62))
        if not isinstance(parsed, int):
            raise ValueError(f"expected an ISO-8601 time with a zone or epoch milliseconds, got {value!r}")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or "{" in value or "}" in value:
            raise ValueError("must be non-empty and without { or } (it is part of Redis Cluster hash tags)")
        return value

    @field_validator("channels_list")
    @classmethod
    def _channels(cls, value: str) -> str:
        for name in filter(None, (c.strip() for c in value.split(","))):
            if "|" in name or name in ("other", "(none)"):
                raise ValueError(f"{name!r}: a channel name cannot contain | and cannot be 'other' or '(none)'")
        return value

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: str) -> str:
        known = ("drop_off", "stalled_critical_path", "upsell_opportunity")
        for part in filter(None, (p.strip() for p in value.split(","))):
            kind, _, share = part.partition("=")
            if kind.strip() not in known:
                raise ValueError(f"{part!r}: unknown alert type {kind.strip()!r} (one of: {', '.join(known)})")
            try:
                if not 0.0 <= float(share) <= 1.0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{part!r}: expected TYPE=SHARE with a share from 0 to 1, e.g. drop_off=0.1") from None
        return value

    @property
    def holdout_shares(self) -> dict[str, float]:
        """Alert type -> share of customers held out."""
        pairs = (p.split("=") for p in self.holdout.split(",") if p.strip())
        return {kind.strip(): float(share) for kind, share in pairs}

    @field_validator("clv_windows")
    @classmethod
    def _windows(cls, value: str) -> str:
        try:
            days = [int(d) for d in value.split(",")]
        except ValueError:
            raise ValueError("expected whole numbers of days, e.g. 30,90,365") from None
        if not days or min(days) < 1:
            raise ValueError("expected whole numbers of days >= 1, e.g. 30,90,365")
        return value

    @property
    def rates(self) -> dict[str, float]:
        """Conversion rates into ``currency``."""
        pairs = (p.split("=") for p in self.fx_rates.split(",") if p.strip())
        return {code.strip(): float(rate) for code, rate in pairs}

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.channels_list.split(",") if c.strip())

    @property
    def min_event_ms(self) -> int:
        value = self.min_event_time
        parsed = parse_timestamp(int(value) if value.lstrip("-").isdigit() else value, min_ms=-(2**62))
        assert isinstance(parsed, int)  # checked when read
        return parsed

    def model_secret(self) -> bytes:
        """The snapshot HMAC key: JOURNEY_MODEL_KEY, else one kept in ``home``/model.key (created once)."""
        if self.model_key is not None:
            return self.model_key.get_secret_value().encode()
        return self._key_file("model.key")

    def pseudonym_secret(self) -> bytes:
        """The pseudonym HMAC key: JOURNEY_PSEUDONYM_KEY, else one kept in ``home``/pseudonym.key."""
        if self.pseudonym_key is not None:
            return self.pseudonym_key.get_secret_value().encode()
        return self._key_file("pseudonym.key")

    def _key_file(self, name: str) -> bytes:
        path = self.home / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path.with_suffix(f".{os.getpid()}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                os.link(path.with_suffix(f".{os.getpid()}"), path)  # atomic: the first worker's key wins
            except FileExistsError:
                pass
            finally:
                path.with_suffix(f".{os.getpid()}").unlink(missing_ok=True)
        return path.read_text().strip().encode()

    @property
    def windows(self) -> list[int]:
        return [int(d) for d in self.clv_windows.split(",")]

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        """Host and port of the first bootstrap server."""
        first = self.kafka_bootstrap.split(",")[0].strip()
        first = first.removeprefix("kafka://")
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port or 9092)

    @property
    def redis_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.redis_url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    @property
    def broker_url(self) -> str:
        """The bootstrap servers in Faust's ``kafka://`` form."""
        servers = [s.strip().removeprefix("kafka://") for s in self.kafka_bootstrap.split(",")]
        return ";".join(f"kafka://{s}" for s in servers if s)

    @property
    def bootstrap_servers(self) -> list[str]:
        """The bootstrap servers as kafka-python wants them."""
        return [s.strip().removeprefix("kafka://") for s in self.kafka_bootstrap.split(",") if s.strip()]


    @property
    def redis_is_cluster(self) -> bool:
        return self.redis_url.startswith(("redis+cluster://", "rediss+cluster://"))

    def unsafe_exposure(self) -> str | None:
        """Why the worker must not start as configured (None: it may): the API bound beyond this
        machine without a token would serve customer data to anyone who can reach it."""
        if self.api_token is None and self.web_host not in LOOPBACK:
            return (
                f"JOURNEY_WEB_HOST={self.web_host} exposes the API beyond this machine but JOURNEY_API_TOKEN "
                "is not set: set a token (customer endpoints then need it), or bind to 127.0.0.1"
            )
        return None


def faust_variables_set() -> list[str]:
    """Faust's own environment variables that are set. The worker ignores them (its Faust app reads no
    environment) and says so, so that e.g. WEB_BIND cannot silently change where the API listens."""
    return [name for name in FAUST_VARIABLES if name in os.environ]


def load_settings() -> Settings:
    """Read the settings from the environment."""
    return Settings()
