"""The retry schedule (engine/transfers/backoff.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from engine.transfers.backoff import RetryPolicy, delay_after, next_attempt_at, schedule

START = datetime(2024, 3, 5, 12, 0)


def test_delays_double_up_to_the_cap() -> None:
    policy = RetryPolicy(first_delay=30, factor=2, max_delay=3600, jitter=0)
    assert [delay_after(policy, n) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_the_default_policy_retries_for_more_than_24_hours_then_gives_up() -> None:
    times = schedule(RetryPolicy(jitter=0), START)
    assert times[-1] - START >= timedelta(hours=24)
    assert times[-1] == START + timedelta(hours=26)  # the last attempt is at the window's end
    assert next_attempt_at(RetryPolicy(), attempts=len(times), retry_from=START, now=times[-1]) is None
    assert len(times) < 40  # about 33 attempts, not a flood


def test_a_short_window_for_tests() -> None:
    policy = RetryPolicy(first_delay=0.1, factor=2, max_delay=0.4, retry_for=1.0, jitter=0)
    gaps = [(b - a).total_seconds() for a, b in zip(schedule(policy, START), schedule(policy, START)[1:])]
    assert gaps[:3] == [0.1, 0.2, 0.4] and sum(gaps) == 1.0


@given(attempts=st.integers(1, 60), draw=st.floats(0, 0.999), jitter=st.floats(0, 0.5))
def test_jitter_stays_within_its_band(attempts: int, draw: float, jitter: float) -> None:
    policy = RetryPolicy(jitter=jitter)
    plain = delay_after(RetryPolicy(jitter=0), attempts)
    assert plain * (1 - jitter) - 1e-6 <= delay_after(policy, attempts, draw) <= plain * (1 + jitter) + 1e-6


@given(elapsed=st.floats(0, 30 * 3600), attempts=st.integers(1, 50))
def test_never_scheduled_past_the_window(elapsed: float, attempts: int) -> None:
    policy = RetryPolicy()
    now = START + timedelta(seconds=elapsed)
    following = next_attempt_at(policy, attempts=attempts, retry_from=START, now=now)
    deadline = START + timedelta(seconds=policy.retry_for)
    assert (following is None) == (now >= deadline)
    assert following is None or now < following <= deadline
