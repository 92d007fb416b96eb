"""The unusual-access rules, as pure functions over audit records."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest

from engine.audit.alerts import (
    AlertConfig,
    all_alerts,
    config_from,
    is_out_of_hours,
    many_patients,
    out_of_hours,
    repeated_denials,
)
from engine.audit.events import break_glass_alert
from tests.audit.conftest import a_record

MONDAY_10 = datetime(2026, 1, 5, 10, 0)  # UTC = London in winter


def _entries(records):
    return list(enumerate(records, start=1))


def test_many_distinct_patients_within_an_hour() -> None:
    config = AlertConfig(many_patients_threshold=30)
    busy = [a_record(i, patient=f"p{i}") for i in range(30)]  # 30 patients in 29 minutes
    alerts = many_patients(_entries(busy), config)
    assert len(alerts) == 1
    assert alerts[0].rule == "many-patients" and alerts[0].count == 30 and alerts[0].user_id == "u1"
    assert "30 distinct patients" in alerts[0].detail


def test_the_same_patients_again_or_a_slow_pace_raise_nothing() -> None:
    config = AlertConfig(many_patients_threshold=30)
    same = [a_record(i, patient=f"p{i % 5}") for i in range(100)]
    slow = [a_record(i * 3, user="u2", patient=f"q{i}") for i in range(40)]  # 20 per hour
    assert many_patients(_entries(same + slow), config) == []


def test_many_patients_counts_each_user_apart() -> None:
    config = AlertConfig(many_patients_threshold=10)
    mixed = [a_record(i, user=f"u{i % 2}", patient=f"p{i}") for i in range(18)]  # 9 each
    assert many_patients(_entries(mixed), config) == []


@pytest.mark.parametrize(("moment", "expected"), [
    (datetime(2026, 1, 5, 10, 0), False),  # Monday morning
    (datetime(2026, 1, 5, 6, 59), True),  # before 07:00
    (datetime(2026, 1, 5, 20, 0), True),  # from 20:00
    (datetime(2026, 1, 3, 12, 0), True),  # Saturday
    (datetime(2026, 7, 6, 19, 30), True),  # 20:30 in London summer time (BST)
    (datetime(2026, 7, 6, 6, 30), False),  # 07:30 BST
])
def test_out_of_hours_in_london_time(moment: datetime, expected: bool) -> None:
    assert is_out_of_hours(moment, AlertConfig()) is expected


def test_out_of_hours_is_one_alert_per_user_and_night() -> None:
    night = datetime(2026, 1, 5, 22, 0)
    records = [a_record(i, start=night) for i in range(3)] + [a_record(0)] + [a_record(0, user="u2", start=night)]
    alerts = out_of_hours(_entries(records), AlertConfig())
    assert sorted((a.user_id, a.count) for a in alerts) == [("u1", 3), ("u2", 1)]
    assert "2026-01-05" in alerts[0].detail


def test_configurable_working_hours_and_weekends() -> None:
    config = config_from({"SHAREDCARE_AUDIT_WORKING_HOURS": "08:00-18:00", "SHAREDCARE_AUDIT_WEEKENDS": "working",
                          "SHAREDCARE_AUDIT_MANY_PATIENTS": "3", "SHAREDCARE_AUDIT_DENIALS": "2",
                          "SHAREDCARE_AUDIT_DENIALS_MINUTES": "1", "SHAREDCARE_AUDIT_TIME_ZONE": "UTC"})
    assert config.working_day_start == time(8) and config.working_day_end == time(18)
    assert not is_out_of_hours(datetime(2026, 1, 3, 12), config)
    assert is_out_of_hours(datetime(2026, 1, 5, 18, 30), config)
    assert config.many_patients_threshold == 3 and config.denials_threshold == 2
    assert config.denials_window == timedelta(minutes=1)
    assert config_from({}) == AlertConfig()


def test_repeated_denials_within_ten_minutes() -> None:
    denied = [a_record(i * 2, outcome="4", denied_reason="no-relationship", patient=f"p{i}") for i in range(5)]
    alerts = repeated_denials(_entries(denied), AlertConfig())
    assert len(alerts) == 1 and alerts[0].count == 5 and "no-relationship" in alerts[0].detail
    spread = [a_record(i * 4, user="u2", outcome="4", denied_reason="x") for i in range(5)]  # over 16 minutes
    assert repeated_denials(_entries(spread), AlertConfig()) == []
    failures_not_denials = [a_record(i, user="u3", outcome="8") for i in range(6)]
    assert repeated_denials(_entries(failures_not_denials), AlertConfig()) == []


def test_all_alerts_in_order_and_as_json() -> None:
    denied = [a_record(i, user="d", outcome="4", denied_reason="no-role") for i in range(5)]
    night = [a_record(0, user="n", start=datetime(2026, 1, 4, 23))]
    alert = break_glass_alert(a_record(0, user="n", purpose="BTG", break_glass_reason="emergency",
                                       start=datetime(2026, 1, 4, 23)))  # alerts are not accesses
    found = all_alerts(_entries(denied + night + [alert]), AlertConfig())
    assert [(a.rule, a.user_id) for a in found] == [("out-of-hours", "n"), ("repeated-denials", "d")]
    as_json = found[1].to_json()
    assert as_json["auditEvents"] == [f"AuditEvent/{i}" for i in range(1, 6)]
    assert as_json["first"] == "2026-01-05T10:00:00Z"
