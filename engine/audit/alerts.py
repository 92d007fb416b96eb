"""Alerts for unusual access, as pure functions over audit records (no I/O, no clock).

Three rules an information-governance officer asks for (issue 4, "Audit"):

- `many_patients`: one user opening at least `threshold` distinct patients within `window`;
- `out_of_hours`: access outside working hours in the organisation's time zone (and at weekends),
  one alert per user per local day;
- `repeated_denials`: at least `count` denied attempts by one user within `window`.

Each rule takes `(seq, AuditRecord)` pairs in any order and returns `Alert`s; `all_alerts` runs all
three under one `AlertConfig`.

    >>> from datetime import datetime
    >>> from engine.audit.events import AuditRecord
    >>> r = AuditRecord(recorded=datetime(2026, 1, 3, 12), user_id="u1", user_name="A", role="R8000",
    ...                 org="RR8", action="R", subtype="read", patient_ids=("p1",))
    >>> [a.rule for a in out_of_hours([(1, r)], AlertConfig())]  # a Saturday
    ['out-of-hours']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from engine.audit.events import REST, AuditRecord

Entry = tuple[int, AuditRecord]


@dataclass(frozen=True)
class AlertConfig:
    """Thresholds; the defaults are issue 4's."""

    many_patients_threshold: int = 30
    many_patients_window: timedelta = timedelta(hours=1)
    working_day_start: time = time(7, 0)
    working_day_end: time = time(20, 0)
    weekends_out_of_hours: bool = True
    time_zone: str = "Europe/London"
    denials_threshold: int = 5
    denials_window: timedelta = timedelta(minutes=10)


def config_from(environ: Mapping[str, str]) -> AlertConfig:
    """An `AlertConfig` from SHAREDCARE_AUDIT_* settings (docs/audit.md); absent ones keep the defaults.

    >>> config_from({"SHAREDCARE_AUDIT_WORKING_HOURS": "08:00-18:30"}).working_day_end
    datetime.time(18, 30)
    """
    config = AlertConfig()
    value = environ.get
    if value("SHAREDCARE_AUDIT_MANY_PATIENTS"):
        config = replace(config, many_patients_threshold=int(value("SHAREDCARE_AUDIT_MANY_PATIENTS", "")))
    if value("SHAREDCARE_AUDIT_MANY_PATIENTS_MINUTES"):
        minutes = int(value("SHAREDCARE_AUDIT_MANY_PATIENTS_MINUTES", ""))
        config = replace(config, many_patients_window=timedelta(minutes=minutes))
    if value("SHAREDCARE_AUDIT_WORKING_HOURS"):
        start, end = value("SHAREDCARE_AUDIT_WORKING_HOURS", "").split("-")
        config = replace(config, working_day_start=time.fromisoformat(start.strip()),
                         working_day_end=time.fromisoformat(end.strip()))
    if value("SHAREDCARE_AUDIT_WEEKENDS"):
        config = replace(config, weekends_out_of_hours=value("SHAREDCARE_AUDIT_WEEKENDS") != "working")
    if value("SHAREDCARE_AUDIT_TIME_ZONE"):
        ZoneInfo(value("SHAREDCARE_AUDIT_TIME_ZONE", ""))  # fail early on an unknown zone
        config = replace(config, time_zone=value("SHAREDCARE_AUDIT_TIME_ZONE", ""))
    if value("SHAREDCARE_AUDIT_DENIALS"):
        config = replace(config, denials_threshold=int(value("SHAREDCARE_AUDIT_DENIALS", "")))
    if value("SHAREDCARE_AUDIT_DENIALS_MINUTES"):
        config = replace(config, denials_window=timedelta(minutes=int(value("SHAREDCARE_AUDIT_DENIALS_MINUTES", ""))))
    return config


@dataclass(frozen=True)
class Alert:
    rule: str
    user_id: str
    user_name: str
    first: datetime
    last: datetime
    count: int
    detail: str
    seqs: tuple[int, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {"rule": self.rule, "user": self.user_id, "userName": self.user_name,
                "first": _instant(self.first), "last": _instant(self.last), "count": self.count,
                "detail": self.detail, "auditEvents": [f"AuditEvent/{s}" for s in self.seqs]}


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _by_user(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    users: dict[str, list[Entry]] = defaultdict(list)
    for seq, record in sorted(entries, key=lambda e: (e[1].recorded, e[0])):
        users[record.user_id].append((seq, record))
    return users


def many_patients(entries: Iterable[Entry], config: AlertConfig) -> list[Alert]:
    """A user touching `many_patients_threshold` or more distinct patients within the window."""
    alerts = []
    for mine in _by_user(e for e in entries if e[1].kind == REST and e[1].patient_ids).values():
        start, seen = 0, defaultdict(int)
        for end, (_, record) in enumerate(mine):
            for patient in record.patient_ids:
                seen[patient] += 1
            while record.recorded - mine[start][1].recorded > config.many_patients_window:
                for patient in mine[start][1].patient_ids:
                    seen[patient] -= 1
                    if not seen[patient]:
                        del seen[patient]
                start += 1
            if len(seen) >= config.many_patients_threshold:
                window = mine[start:end + 1]
                alerts.append(_alert("many-patients", window, f"{len(seen)} distinct patients within "
                                     f"{_minutes(config.many_patients_window)} minutes"))
                start, seen = end + 1, defaultdict(int)
    return alerts


def is_out_of_hours(moment: datetime, config: AlertConfig) -> bool:
    """`moment` (naive UTC) falls outside working hours in `config.time_zone`, or on a weekend."""
    local = moment.replace(tzinfo=UTC).astimezone(ZoneInfo(config.time_zone))
    if config.weekends_out_of_hours and local.weekday() >= 5:
        return True
    return not config.working_day_start <= local.time() < config.working_day_end


def out_of_hours(entries: Iterable[Entry], config: AlertConfig) -> list[Alert]:
    """Access out of hours: one alert per user per local calendar day."""
    zone = ZoneInfo(config.time_zone)
    days: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for user, mine in _by_user(e for e in entries if e[1].kind == REST).items():
        for seq, record in mine:
            if is_out_of_hours(record.recorded, config):
                day = record.recorded.replace(tzinfo=UTC).astimezone(zone).date().isoformat()
                days[(user, day)].append((seq, record))
    return [_alert("out-of-hours", found, f"{len(found)} accesses out of hours on {day} ({config.time_zone})")
            for (_, day), found in days.items()]


def repeated_denials(entries: Iterable[Entry], config: AlertConfig) -> list[Alert]:
    """`denials_threshold` or more denied attempts by one user within `denials_window`."""
    alerts = []
    for mine in _by_user(e for e in entries if e[1].denied).values():
        start = 0
        for end, (_, record) in enumerate(mine):
            while record.recorded - mine[start][1].recorded > config.denials_window:
                start += 1
            if end - start + 1 >= config.denials_threshold:
                window = mine[start:end + 1]
                reasons = sorted({r.denied_reason or "" for _, r in window})
                alerts.append(_alert("repeated-denials", window, f"{len(window)} denied attempts within "
                                     f"{_minutes(config.denials_window)} minutes ({', '.join(reasons)})"))
                start = end + 1
    return alerts


def all_alerts(entries: Sequence[Entry], config: AlertConfig) -> list[Alert]:
    """Every rule's alerts, earliest first."""
    found = many_patients(entries, config) + out_of_hours(entries, config) + repeated_denials(entries, config)
    return sorted(found, key=lambda a: (a.first, a.rule, a.user_id))


def _alert(rule: str, window: Sequence[Entry], detail: str) -> Alert:
    first, last = window[0][1], window[-1][1]
    return Alert(rule=rule, user_id=first.user_id, user_name=first.user_name, first=first.recorded,
                 last=last.recorded, count=len(window), detail=detail, seqs=tuple(seq for seq, _ in window))


def _minutes(span: timedelta) -> int:
    return int(span.total_seconds() // 60)
