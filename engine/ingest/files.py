"""HL7 v2 messages from files (`sharedcare load FILE.hl7…`): one or many messages per file.

Each file is decoded (BOM, MSH-18 charset) and split into messages (`split_batch`: FHS/BHS
batch envelopes removed); each message then goes through `ingest_message` with transport `file`,
in file order — exactly as if it had arrived over MLLP, so it is stored, de-duplicated and
acknowledged the same way (the ACKs are counted, not sent anywhere).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.hl7v2.parser import decode_bytes, split_batch
from engine.ingest.pipeline import IngestContext, ingest_message

HL7_SUFFIXES = frozenset({".hl7", ".txt", ".er7"})
# Golden files beside fixture messages (`fixtures/hl7v2/<TYPE>/NN_name.expected.json`): what a test
# expects the map to make of the message. They are neither messages nor FHIR, so loading a fixture
# folder (`sharedcare load fixtures/hl7v2`) must skip them.
GOLDEN_SUFFIX = ".expected.json"


def is_golden_file(path: Path) -> bool:
    """Whether `path` is a golden file (`*.expected.json`), never to be loaded."""
    return path.name.lower().endswith(GOLDEN_SUFFIX)


@dataclass
class FileIngestReport:
    """What loading some files did: counts by ACK code, duplicates, and each failure with its reason."""

    files: int = 0
    messages: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.codes["AA"]

    def summary(self) -> str:
        parts = [f"{self.messages} HL7 v2 messages from {self.files} files: {self.accepted} accepted"]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates")
        failed = self.messages - self.accepted
        if failed:
            parts.append(f"{failed} failed (stored for replay)")
        return "; ".join(parts)


def hl7_files(paths: Iterable[Path | str]) -> list[Path]:
    """Files named, and under folders named the .hl7/.txt/.er7 files (recursively, golden files never),
    in name order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.suffix.lower() in HL7_SUFFIXES and p.is_file() and not is_golden_file(p)))
        else:
            found.append(path)
    return found


def read_messages(path: Path) -> list[str]:
    """The messages in one file, in order."""
    return split_batch(decode_bytes(path.read_bytes()))


async def ingest_files(ctx: IngestContext, paths: Iterable[Path | str],
                       progress: Callable[[int], None] | None = None) -> FileIngestReport:
    """Ingest every message of every file in `paths`; unreadable files are reported, not fatal."""
    report = FileIngestReport()
    for path in hl7_files(paths):
        report.files += 1
        try:
            messages = read_messages(path)
        except OSError as exc:
            report.failures.append(f"{path}: cannot be read ({exc.strerror or exc})")
            continue
        for number, text in enumerate(messages, start=1):
            outcome = await ingest_message(ctx, text, transport="file", received_at=ctx.now())
            report.messages += 1
            report.codes[outcome.code] += 1
            report.duplicates += outcome.duplicate
            if outcome.code != "AA":
                report.failures.append(f"{path} message {number}: {outcome.code} {outcome.error_code or ''} "
                                       f"{outcome.error_text or ''} (stored as message {outcome.message_id})".rstrip())
            if progress:
                progress(1)
    return report
