"""Transfer and delivery settings from the environment (read once, at the edge; docs/transfers.md lists them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from engine.transfers.backoff import RetryPolicy
from engine.transfers.receivers import CARE_HOME_DESTINATIONS


@dataclass(frozen=True)
class TransfersConfig:
    care_home_codes: frozenset[str] = CARE_HOME_DESTINATIONS
    document_type: str = "inpatient-discharge"
    admin_roles: frozenset[str] = frozenset({"R8015"})  # Systems Support: dead letters, any organisation
    delivery_enabled: bool = True
    poll_seconds: float = 2.0
    batch_size: int = 20
    timeout_seconds: float = 10.0
    lease_seconds: float = 60.0  # a claim outlives one attempt; a worker killed mid-attempt frees it after this
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def _number(source: Mapping[str, str], name: str, default: float) -> float:
    value = source.get(name)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative")
    return number


def _codes(source: Mapping[str, str], name: str, default: frozenset[str]) -> frozenset[str]:
    value = source.get(name)
    return frozenset(c.strip() for c in value.split(",") if c.strip()) if value else default


def load_transfers_config(environ: Mapping[str, str] | None = None) -> TransfersConfig:
    """`SHAREDCARE_TRANSFERS_*` and `SHAREDCARE_DELIVERY_*` (defaults in `TransfersConfig`)."""
    env = os.environ if environ is None else environ
    defaults, retry = TransfersConfig(), RetryPolicy()
    config = TransfersConfig(
        care_home_codes=_codes(env, "SHAREDCARE_TRANSFERS_CARE_HOME_CODES", defaults.care_home_codes),
        document_type=env.get("SHAREDCARE_TRANSFERS_DOCUMENT_TYPE") or defaults.document_type,
        admin_roles=_codes(env, "SHAREDCARE_TRANSFERS_ADMIN_ROLES", defaults.admin_roles),
        delivery_enabled=(env.get("SHAREDCARE_DELIVERY_ENABLED") or "1").lower() not in {"0", "false", "no", "off"},
        poll_seconds=_number(env, "SHAREDCARE_DELIVERY_POLL_SECONDS", defaults.poll_seconds),
        batch_size=max(1, int(_number(env, "SHAREDCARE_DELIVERY_BATCH_SIZE", defaults.batch_size))),
        timeout_seconds=_number(env, "SHAREDCARE_DELIVERY_TIMEOUT_SECONDS", defaults.timeout_seconds),
        lease_seconds=_number(env, "SHAREDCARE_DELIVERY_LEASE_SECONDS", defaults.lease_seconds),
        retry=RetryPolicy(
            first_delay=_number(env, "SHAREDCARE_DELIVERY_FIRST_RETRY_SECONDS", retry.first_delay),
            factor=max(1.0, _number(env, "SHAREDCARE_DELIVERY_BACKOFF_FACTOR", retry.factor)),
            max_delay=_number(env, "SHAREDCARE_DELIVERY_MAX_RETRY_DELAY_SECONDS", retry.max_delay),
            retry_for=_number(env, "SHAREDCARE_DELIVERY_RETRY_FOR_SECONDS", retry.retry_for),
            jitter=min(1.0, _number(env, "SHAREDCARE_DELIVERY_JITTER", retry.jitter)),
        ),
    )
    if config.lease_seconds <= config.timeout_seconds:
        # A claim must outlive the attempt it covers, or a second worker could send the same notification.
        raise ValueError("SHAREDCARE_DELIVERY_LEASE_SECONDS must be longer than SHAREDCARE_DELIVERY_TIMEOUT_SECONDS")
    return config


@lru_cache(maxsize=1)
def process_config() -> TransfersConfig:
    """This process's configuration (the ingest hook has no settings object to read it from)."""
    return load_transfers_config()
