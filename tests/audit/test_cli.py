"""`sharedcare audit verify | export | report`, in process, against the test database."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from engine.audit.events import break_glass_alert
from engine.audit.log import append
from engine.cli import main
from engine.db.database import Database
from tests.audit.conftest import a_record


@pytest.fixture
def cli_db(monkeypatch: pytest.MonkeyPatch, audit_db: Database, database_url: str, sc_home: Path, run) -> Database:
    """Audit tables holding three reads, a denial, and a break-glass access with its alert."""
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", database_url)
    monkeypatch.setenv("SHAREDCARE_HOME", str(sc_home))
    bg = a_record(4, user="u3", purpose="BTG", break_glass_reason="Emergency admission")
    records = [a_record(i, patient=f"p{i}") for i in range(3)]
    records += [a_record(3, user="u2", outcome="4", denied_reason="no-relationship"), bg, break_glass_alert(bg)]

    async def seed() -> None:
        async with audit_db.write() as conn:
            await append(conn, records)

    run(seed())
    return audit_db


def test_verify_passes_then_fails_after_tampering(cli_db: Database, run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify"]) == 0
    assert "chain intact" in capsys.readouterr().out

    async def tamper() -> None:
        async with cli_db.write() as conn:
            await conn.execute(text("DELETE FROM audit_log WHERE seq = 2"))

    run(tamper())
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BREAK" in out and "chain BROKEN" in out


def test_export_writes_csv_for_a_period(cli_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "export", "--since", "2026-01-05T10:01:00", "--until", "2026-01-05T10:03:00"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["seq"] for r in rows] == ["2", "3"]
    assert main(["audit", "export"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 6


def test_reports(cli_db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "report", "break-glass", "--status", "pending"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["pending"] == 1 and report["entries"][0]["breakGlassReason"] == "Emergency admission"

    assert main(["audit", "report", "user", "u1"]) == 0
    assert orjson.loads(capsys.readouterr().out)["total"] == 3

    assert main(["audit", "report", "patient", "p1"]) == 0
    accessors = orjson.loads(capsys.readouterr().out)["accessors"]
    assert {a["user"] for a in accessors} == {"u1", "u2", "u3"}

    assert main(["audit", "report", "alerts", "--since", "2026-01-05", "--until", "2026-01-06"]) == 0
    assert orjson.loads(capsys.readouterr().out)["total"] == 0


def test_bad_times_are_usage_errors(cli_db: Database) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "export", "--since", "last tuesday"])
    assert exit_info.value.code == 2
