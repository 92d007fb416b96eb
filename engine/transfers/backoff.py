"""The retry schedule of a notification: exponential backoff inside a retry window, then dead-letter.

Attempt n (1-based) that failed waits `first_delay × factor^(n−1)`, capped at `max_delay`, with ±`jitter`
spread so that many receivers coming back at once are not hit together. Retrying goes on until
`retry_for` has passed since the window opened (the event, or a person's retry of a dead letter): the
last attempt is made at the window's end, and only a failure then dead-letters the notification —
so a receiver down for 24 hours still gets it with the default 26-hour window.

Pure: the caller passes `now` and the random draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_delay: float = 30.0  # seconds after the first failed attempt
    factor: float = 2.0
    max_delay: float = 3600.0
    retry_for: float = 26 * 3600.0  # the retry window, seconds (at least 24 hours in production)
    jitter: float = 0.1  # ± fraction of each delay


def delay_after(policy: RetryPolicy, attempts: int, draw: float = 0.5) -> float:
    """Seconds to wait after the `attempts`-th failed attempt; `draw` in [0, 1) spreads it by ±jitter.

    >>> delay_after(RetryPolicy(first_delay=30, jitter=0), 3)
    120.0
    """
    base = min(policy.max_delay, policy.first_delay * policy.factor ** max(0, attempts - 1))
    return max(0.0, base * (1 + policy.jitter * (2 * draw - 1)))


def next_attempt_at(policy: RetryPolicy, *, attempts: int, retry_from: datetime, now: datetime,
                    draw: float = 0.5) -> datetime | None:
    """When to try again after `attempts` failures, or None to dead-letter (the window is over)."""
    deadline = retry_from + timedelta(seconds=policy.retry_for)
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=delay_after(policy, attempts, draw)), deadline)


def schedule(policy: RetryPolicy, start: datetime, *, draw: float = 0.5, limit: int = 1000) -> list[datetime]:
    """Every attempt time of a notification that always fails, starting at `start` (for docs and tests)."""
    times, now = [start], start
    while len(times) < limit:
        following = next_attempt_at(policy, attempts=len(times), retry_from=start, now=now, draw=draw)
        if following is None:
            break
        times.append(following)
        now = following
    return times
