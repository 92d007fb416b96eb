"""Replay from the error queue, file ingestion, sender configuration and the `replay` command."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from adapters.senders import SenderConfig
from engine.ingest import apply, store
from engine.ingest.cli import add_replay_parser, print_summary, run_replay
from engine.ingest.files import ingest_files
from engine.ingest.replay import ReplaySelection, replay
from engine.ingest.senders import (
    SenderConfigError,
    accept_unknown_senders,
    load_senders,
    load_senders_file,
)

from .helpers import counts, ingest, messages, stored
from .messages import adt

REPO = Path(__file__).resolve().parents[2]


def test_replay_after_configuring_the_sender(ctx, run) -> None:
    rejected = run(ingest(ctx, adt("A01", "RY7-1", sender="RY7")))
    assert rejected.code == "AR"
    assert run(replay(ctx, ReplaySelection(ids=(rejected.message_id,))))[0].after_status == "rejected"
    ctx.senders["RY7"] = SenderConfig("RY7", "community", "a newly configured trust")
    [result] = run(replay(ctx, ReplaySelection(error_code="204")))
    assert (result.before_status, result.after_status, result.message_id) == ("rejected", "processed",
                                                                             rejected.message_id)
    [row] = run(messages(ctx.db))
    assert (row.status, row.ack_code, row.error_code, row.attempts) == ("processed", "AA", None, 3)
    assert run(counts(ctx.db))["Patient"] == 1
    assert run(stored(ctx.db, "Provenance", apply.provenance_id(row.id))) is not None
    # The sender's re-send is now answered with the replay's AA; a second replay finds nothing to do.
    resend = run(ingest(ctx, adt("A01", "RY7-1", sender="RY7")))
    assert resend.duplicate and resend.code == "AA" and resend.ack == row.ack
    assert run(replay(ctx, ReplaySelection(error_code="204"))) == []
    [skipped] = run(replay(ctx, ReplaySelection(ids=(row.id,))))
    assert skipped.detail.startswith("skipped")


def test_replay_dry_run_changes_nothing(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RY7-2", sender="RY7")))
    ctx.senders["RY7"] = SenderConfig("RY7", "hospital")
    [result] = run(replay(ctx, ReplaySelection(statuses=("rejected",), since=rejected_time(ctx, run)),
                          dry_run=True))
    assert result.after_status == "processed"
    [row] = run(messages(ctx.db))
    assert (row.status, row.attempts) == ("rejected", 1)
    assert run(counts(ctx.db)) == {}


def rejected_time(ctx, run):
    return run(messages(ctx.db))[0].received_at


def test_replay_is_idempotent(ctx, run, monkeypatch) -> None:
    real = store.write_changes

    async def broken(conn, changes, now, sources=None, message=None):
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "write_changes", broken)
    failed = run(ingest(ctx, adt("A01", "RR8-R1")))
    assert failed.error_code == "207"
    monkeypatch.setattr(store, "write_changes", real)
    [first] = run(replay(ctx, ReplaySelection(ids=(failed.message_id,))))
    assert first.succeeded
    versions = run(stored(ctx.db, "Patient", run(messages(ctx.db))[0].patient_id))["meta"]["versionId"]
    run(replay(ctx, ReplaySelection(ids=(failed.message_id,), statuses=("processed", "error"))))
    assert run(stored(ctx.db, "Patient", run(messages(ctx.db))[0].patient_id))["meta"]["versionId"] == versions
    assert len(run(messages(ctx.db))) == 1


# -- files ------------------------------------------------------------------------------------------------


def test_ingest_files_reads_batches_and_single_messages(ctx, run, tmp_path) -> None:
    batch = "\r".join(["FHS|^~\\&|PAS|RR8", "BHS|^~\\&|PAS|RR8", adt("A01", "F-1").rstrip("\r"),
                       adt("A08", "F-2", family="JONES", event="20240302101200").rstrip("\r"),
                       adt("A01", "F-3", sender="RXX").rstrip("\r"), "BTS|3", "FTS|1"]) + "\r"
    (tmp_path / "batch.hl7").write_text(batch, encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.hl7").write_bytes(adt("A01", "F-1").replace("\r", "\r\n").encode())
    report = run(ingest_files(ctx, [tmp_path]))
    assert (report.files, report.messages, report.accepted, report.duplicates) == (2, 4, 3, 1)
    assert len(report.failures) == 1 and "204" in report.failures[0]
    assert {m.transport for m in run(messages(ctx.db))} == {"file"}
    assert "4 HL7 v2 messages from 2 files" in report.summary()


# -- senders -------------------------------------------------------------------------------------------------


def test_demo_senders_file_loads() -> None:
    senders = load_senders_file(REPO / "fixtures" / "senders.json")
    assert {s: c.kind for s, c in senders.items()} == {"RR8": "hospital", "RY6": "community",
                                                       "RGD": "mental_health"}
    assert {(label.system.rsplit("/", 1)[1], label.code) for label in senders["RGD"].security_labels} == {
        ("v3-ActCode", "PSY"), ("v3-Confidentiality", "R")}


def test_senders_from_the_environment(tmp_path) -> None:
    path = tmp_path / "senders.json"
    path.write_text(json.dumps([{"ods_code": "RXX", "kind": "community", "mrn_system": "urn:x"}]))
    senders = load_senders({"SHAREDCARE_SENDERS_FILE": str(path)})
    assert senders["RXX"].system_for("mrn") == "urn:x" and senders["RXX"].timezone == "Europe/London"
    assert accept_unknown_senders({"SHAREDCARE_ACCEPT_UNKNOWN_SENDERS": "1"})
    assert not accept_unknown_senders({})


@pytest.mark.parametrize("document, fault", [
    ([{"kind": "hospital"}], "ods_code"),
    ([{"ods_code": "A", "kind": "pharmacy"}], "kind"),
    ([{"ods_code": "A", "colour": "red"}], "colour"),
    ([{"ods_code": "A"}, {"ods_code": "A"}], "twice"),
    ([{"ods_code": "A", "security_labels": [{"code": "R"}]}], "system"),
    ([{"ods_code": "A", "timezone": "Europe/Leeds"}], "timezone"),
    ([{"ods_code": "A", "timezone": 1}], "timezone"),
    ({"not": "a list"}, "list"),
])
def test_bad_senders_files_are_refused_with_the_reason(tmp_path, document, fault) -> None:
    path = tmp_path / "senders.json"
    path.write_text(json.dumps(document))
    with pytest.raises(SenderConfigError, match=fault):
        load_senders_file(path)


# -- the command ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharedcare")
    add_replay_parser(parser.add_subparsers(dest="command"))
    return parser


def test_replay_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["replay", "--help"])
    assert exit_info.value.code == 0
    assert "--error-code" in capsys.readouterr().out


def test_replay_command_end_to_end(ctx, run, monkeypatch, database_url, tmp_path, capsys) -> None:
    failed = run(ingest(ctx, adt("A01", "RY7-9", sender="RY7")))
    run(ctx.db.engine.dispose())
    path = tmp_path / "senders.json"
    path.write_text(json.dumps([{"ods_code": "RY7", "kind": "hospital"}]))
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", database_url)
    monkeypatch.setenv("SHAREDCARE_SENDERS_FILE", str(path))
    args = _parser().parse_args(["replay", "--id", str(failed.message_id)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "rejected 204" in out and "processed" in out
    assert run(messages(ctx.db))[0].status == "processed"
    assert run_replay(_parser().parse_args(["replay"])) == 2


def test_summary_table_lines_up() -> None:
    from engine.ingest.replay import ReplayResult

    out = io.StringIO()
    print_summary([ReplayResult(7, "RR8", "C1", "ADT^A01", "error", "102", "processed", None, "processed")], out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["id", "sender", "type"] and lines[2].startswith("7 ")


def test_context_from_the_environment(tmp_path, ctx) -> None:
    from engine.ingest.pipeline import IngestContext

    path = tmp_path / "senders.json"
    path.write_text(json.dumps([{"ods_code": "RXX"}]))
    configured = IngestContext.from_environment(ctx.db, {"SHAREDCARE_SENDERS_FILE": str(path),
                                                         "SHAREDCARE_ACCEPT_UNKNOWN_SENDERS": "1"})
    assert set(configured.senders) == {"RXX"} and configured.accept_unknown_senders
    assert configured.sender("NEW").kind == "hospital"  # the generic adapter for an unknown sender
    assert IngestContext.from_environment(ctx.db, {}).senders.keys() == {"RR8", "RY6", "RGD"}
