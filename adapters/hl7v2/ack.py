"""HL7 v2 acknowledgements, pure: the ACK text and whether to send one (HL7 v2.5 ch. 2, §2.9, §2.14).

Over MLLP sharedcare answers every message on the same connection with exactly one ACK, sent
after the transaction holding the message's effects has committed. Which ACK is decided by the
acknowledgement mode of the message (MSH-15 accept, MSH-16 application; HL7 table 0155):

- original mode (both empty): always an application ACK — AA, AE or AR;
- enhanced mode: MSH-16 decides the application ACK (AL always, NE never, ER only on error,
  SU only on success; empty counts as AL). When MSH-16 asks for none but MSH-15 asks for an
  accept ACK (e.g. MSH-15 AL, MSH-16 NE), a commit ACK is sent instead: CA, CE or CR.
  We never send the accept ACK and then a separate application ACK.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from adapters.hl7v2.parser import DEFAULT_ENCODING, Encoding, Message, ParseError
from mappings.result import APPLICATION_INTERNAL_ERROR, ErrorLocation, MappingError

__all__ = ["ERROR_TEXT", "ack_code", "ack_requirement", "build_ack"]

Outcome = Literal["AA", "AE", "AR"]

# HL7 table 0357 (message error condition codes).
ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# Echoed sender text must not carry bytes that would end a segment or an MLLP frame.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_COMMIT = {"AA": "CA", "AE": "CE", "AR": "CR"}
_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_DEFAULT_TEXT = {"AE": "Application error", "AR": "Application reject",
                 "CE": "Commit error", "CR": "Commit reject"}


def _wants(mode: str, outcome: Outcome) -> bool:
    """Table 0155: AL always, NE never, ER on error, SU on success; anything else as AL."""
    mode = mode.strip().upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return outcome != "AA"
    if mode == "SU":
        return outcome == "AA"
    return True


def ack_code(message: Message | None, outcome: Outcome) -> str | None:
    """The ACK code to send for `outcome` (AA/AE/AR or the commit CA/CE/CR), or None for no ACK.

    HL7 v2.5 §2.9.2 (original mode) and §2.9.3 (enhanced mode); see the module docstring.
    """
    if message is None:
        return outcome  # unparseable: the sender's mode is unknown, so answer as original mode
    accept, application = message.accept_ack_type, message.application_ack_type
    if not accept.strip() and not application.strip():
        return outcome
    if _wants(application, outcome):
        return outcome
    if accept.strip() and _wants(accept, outcome):
        return _COMMIT[outcome]
    return None


def ack_requirement(message: Message | None, outcome: Outcome) -> bool:
    """Whether to send an ACK at all for `outcome`, by MSH-15/MSH-16 (HL7 v2.5 §2.9)."""
    return ack_code(message, outcome) is not None


def build_ack(message: Message | None, code: str, *, now: datetime, control_id: str,
              error: MappingError | ParseError | None = None,
              raw_header: str | None = None) -> str:
    """An ACK for `message` (HL7 v2.5 §2.14.1 ACK; MSA §2.15.8; ERR §2.15.5), segments ended by CR.

    MSH swaps the original sender and receiver, MSH-7 is `now` (YYYYMMDDHHMMSS), MSH-9 is
    `ACK^<trigger>^ACK`, MSH-10 is `control_id`, MSH-11/12/18 are copied. MSA-2 is the original
    MSH-10. For AE/AR/CE/CR an ERR segment carries ERR-1 (v2.3 ELD, for old receivers), ERR-2
    (ERL), ERR-3 (table 0357 code), ERR-4 severity E and ERR-8 the readable message. When the
    message could not be parsed, pass `message=None` and the raw text as `raw_header`: what can
    be read of its MSH is still used so the sender can correlate the NACK.
    """
    if code not in _CODES:
        raise ValueError(f"not an acknowledgement code: {code!r}")
    header = _Header.of(message) if message is not None else _Header.from_raw(raw_header or "")
    enc = header.encoding
    esc = enc.escape_text
    fs, cs = enc.field, enc.component
    ack_type = cs.join(("ACK", header.trigger, "ACK")) if header.trigger else "ACK"
    msh = [
        "MSH", enc.characters, header.receiving_app, header.receiving_facility,
        header.sending_app, header.sending_facility, now.strftime("%Y%m%d%H%M%S"), "",
        ack_type, esc(control_id), header.processing_id or "P", header.version or "2.5",
        "", "", "", "", "", header.charset,
    ]
    text = error.message if error is not None else _DEFAULT_TEXT.get(code, "")
    segments = [fs.join(msh).rstrip(fs), fs.join(("MSA", code, header.control_id, esc(text))).rstrip(fs)]
    if code not in ("AA", "CA"):
        segments.append(_err(enc, error))
    return "\r".join(segments) + "\r"


def _err(enc: Encoding, error: MappingError | ParseError | None) -> str:
    """ERR in v2.5 form with ERR-1 filled the v2.3 way (ELD)."""
    code = error.code if error is not None else APPLICATION_INTERNAL_ERROR
    label = ERROR_TEXT.get(code, "Application error")
    message = error.message if error is not None else label
    loc = error.location if error is not None else None
    fs, cs, ss, esc = enc.field, enc.component, enc.subcomponent, enc.escape_text
    where = _location_parts(loc)
    eld = cs.join((*where[:3], ss.join((code, esc(label), "HL70357"))))
    erl = cs.join(where).rstrip(cs) if loc is not None else ""
    cwe = cs.join((code, esc(label), "HL70357"))
    return fs.join(("ERR", eld, erl, cwe, "E", "", "", "", esc(message)))


def _location_parts(loc: ErrorLocation | None) -> list[str]:
    if loc is None:
        return ["", "", "", "", ""]
    parts = [loc.segment, str(loc.sequence), loc.field, loc.repetition, loc.component]
    return ["" if p is None else str(p) for p in parts]


class _Header:
    """What an ACK needs from the original MSH, as encoded field text."""

    __slots__ = (
        "charset",
        "control_id",
        "encoding",
        "processing_id",
        "receiving_app",
        "receiving_facility",
        "sending_app",
        "sending_facility",
        "trigger",
        "version",
    )

    def __init__(self, encoding: Encoding, fields: list[str]) -> None:
        def f(n: int) -> str:
            return _CONTROL.sub("", fields[n]) if n < len(fields) else ""

        cs, rs = encoding.component, encoding.repetition
        self.encoding = encoding
        self.sending_app, self.sending_facility = f(3), f(4)
        self.receiving_app, self.receiving_facility = f(5), f(6)
        message_type = f(9).split(rs)[0].split(cs)
        self.trigger = message_type[1] if len(message_type) > 1 else ""
        self.control_id = f(10)
        self.processing_id = f(11)
        self.version = f(12)
        self.charset = f(18)

    @classmethod
    def of(cls, message: Message) -> _Header:
        msh, enc = message.segments[0], message.encoding
        if enc.escape and "\x00" not in enc.characters:
            return cls(enc, [msh.raw_field(n) for n in range(19)])
        # An MSH-2 without all four delimiters cannot be written back: re-encode with defaults.
        fields = [DEFAULT_ENCODING.escape_text(msh.value(n)) for n in range(19)]
        fields[9] = "^".join(DEFAULT_ENCODING.escape_text(msh.value(9, c)) for c in (1, 2))
        return cls(DEFAULT_ENCODING, fields)

    @classmethod
    def from_raw(cls, raw: str) -> _Header:
        """Best-effort MSH split of text that did not parse; defaults where it is unusable."""
        start = raw.find("MSH")
        line = raw[start:].replace("\n", "\r").split("\r")[0] if start >= 0 else ""
        encoding = _raw_encoding(line)
        if encoding is None:
            return cls(DEFAULT_ENCODING, [])
        fields = line.split(encoding.field)
        fields.insert(1, encoding.field)
        return cls(encoding, fields)


def _raw_encoding(line: str) -> Encoding | None:
    """The delimiters of a raw MSH line if they are usable for writing an ACK, else None."""
    if len(line) < 8:
        return None
    fs = line[3]
    chars = line[4:line.find(fs, 4)] if fs in line[4:] else ""
    if len(chars) == 5 and chars[2] == chars[3]:
        chars = chars[:3] + chars[4]
    if len(chars) not in (4, 5) or len(set(chars + fs)) != len(chars) + 1 \
            or any(c.isalnum() or c.isspace() or ord(c) < 32 for c in chars + fs):
        return None
    return Encoding(fs, *chars[:4], chars[4:5])
