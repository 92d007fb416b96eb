"""adapters/hl7v2/ack.py: ACK text (HL7 v2.5 §2.14.1, MSA, ERR) and acknowledgement modes (§2.9)."""

from __future__ import annotations

from datetime import datetime

import pytest

from adapters.hl7v2.ack import ack_code, ack_requirement, build_ack
from adapters.hl7v2.parser import ParseError, parse_message
from mappings.result import ErrorLocation, MappingError

NOW = datetime(2024, 5, 1, 12, 30, 45)
MSG = ("MSH|^~\\&|PAS|RX1^1.2.3^ISO|SC|CITY|20240501120000||ADT^A01^ADT_A01|MSG001|P|2.4|||{15}|{16}||UNICODE UTF-8\r"
       "PID|1||123^^^RX1^MR")


def _msg(accept: str = "", application: str = "") -> str:
    return MSG.replace("{15}", accept).replace("{16}", application)


def _segments(ack: str) -> list[list[str]]:
    assert ack.endswith("\r") and "\n" not in ack
    return [s.split("|") for s in ack[:-1].split("\r")]


def test_aa() -> None:
    ack = build_ack(parse_message(_msg()), "AA", now=NOW, control_id="ACK1")
    msh, msa = _segments(ack)
    assert msh[:13] == ["MSH", "^~\\&", "SC", "CITY", "PAS", "RX1^1.2.3^ISO", "20240501123045", "",
                        "ACK^A01^ACK", "ACK1", "P", "2.4", ""]
    assert msh[17] == "UNICODE UTF-8"
    assert msa == ["MSA", "AA", "MSG001"]
    parsed = parse_message(ack)
    assert (parsed.message_code, parsed.trigger, parsed.structure, parsed.control_id) == ("ACK", "A01", "ACK", "ACK1")


def test_ae_with_mapping_error_location() -> None:
    error = MappingError("101", "PID-3 has no identifier | see spec", ErrorLocation("PID", 1, 3, 2, 1))
    ack = parse_message(build_ack(parse_message(_msg()), "AE", now=NOW, control_id="A2", error=error))
    msa, err = ack.first("MSA"), ack.first("ERR")
    assert msa is not None and err is not None
    assert (msa.value(1), msa.value(2), msa.value(3)) == ("AE", "MSG001", "PID-3 has no identifier | see spec")
    assert err.raw_field(1) == "PID^1^3^101&Required field missing&HL70357"
    assert err.raw_field(2) == "PID^1^3^2^1"
    assert err.raw_field(3) == "101^Required field missing^HL70357"
    assert err.value(4) == "E"
    assert err.value(8) == "PID-3 has no identifier | see spec"
    assert "\\F\\" in err.raw_field(8)


def test_ar_without_location_or_error() -> None:
    ack = parse_message(build_ack(parse_message(_msg()), "AR", now=NOW, control_id="A3",
                                  error=MappingError("200", "ORU^R01 not supported", reject=True)))
    err = ack.first("ERR")
    assert err is not None and err.raw_field(2) == "" and err.value(3) == "200"
    assert err.value(8) == "ORU^R01 not supported"
    bare = parse_message(build_ack(parse_message(_msg()), "AE", now=NOW, control_id="A4"))
    assert bare.first("ERR").value(3) == "207"  # type: ignore[union-attr]
    assert bare.first("MSA").value(3) == "Application error"  # type: ignore[union-attr]


@pytest.mark.parametrize("code", ["CA", "CE", "CR"])
def test_commit_codes(code: str) -> None:
    ack = parse_message(build_ack(parse_message(_msg("AL", "NE")), code, now=NOW, control_id="C1"))
    assert ack.first("MSA").value(1) == code  # type: ignore[union-attr]
    assert (ack.first("ERR") is None) == (code == "CA")


def test_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError, match="acknowledgement code"):
        build_ack(None, "OK", now=NOW, control_id="x")


def test_message_own_encoding_characters_are_used_and_text_escaped() -> None:
    source = "MSH#$%@!#APP$X#FAC#SC#CITY#1##ADT$A08#M#P#2.3\rPID#1"
    error = MappingError("102", "bad # value $ here @", ErrorLocation("PID", 1, 7))
    ack = build_ack(parse_message(source), "AE", now=NOW, control_id="A#1", error=error)
    assert ack.startswith("MSH#$%@!#SC#CITY#APP$X#FAC#20240501123045##ACK$A08$ACK#A@F@1#P#2.3\r")
    parsed = parse_message(ack)
    assert parsed.control_id == "A#1"
    assert parsed.first("ERR").value(8) == "bad # value $ here @"  # type: ignore[union-attr]
    assert parsed.first("MSA").value(2) == "M"  # type: ignore[union-attr]


def test_unparseable_message_uses_raw_header() -> None:
    raw = "MSH|^~\\&|LAB|RX1|SC|CITY|20240101||ORU^R01|C77|T|2.5.1\r\rpid|broken"
    with pytest.raises(ParseError) as caught:
        parse_message(raw)
    ack = build_ack(None, "AR", now=NOW, control_id="N1", error=caught.value, raw_header=raw)
    parsed = parse_message(ack)
    assert (parsed.sending_application, parsed.receiving_application) == ("SC", "LAB")
    assert (parsed.trigger, parsed.processing_id, parsed.version) == ("R01", "T", "2.5.1")
    assert parsed.first("MSA").value(2) == "C77"  # type: ignore[union-attr]
    assert parsed.first("ERR").value(3) == "100"  # type: ignore[union-attr]


def test_echoed_header_text_is_stripped_of_framing_bytes() -> None:
    raw = "MSH|^~\\&|LA\x0bB|RX\x1c1|SC|CITY|1||ADT^A01|C\x0b1|P|2.4\rpid|x"
    ack = build_ack(None, "AR", now=NOW, control_id="N3", raw_header=raw)
    assert "\x0b" not in ack and "\x1c" not in ack
    assert parse_message(ack).first("MSA").value(2) == "C1"  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", [None, "", "garbage", "MSH", "MSH|^^^^|A", "MSHA^~\\&|x", "MSH|\r\n\x0b|"])
def test_unusable_raw_header_still_gives_a_parseable_ack(raw: str | None) -> None:
    ack = build_ack(None, "AR", now=NOW, control_id="N2", error=ParseError("100", "no MSH"), raw_header=raw)
    parsed = parse_message(ack)
    assert parsed.message_code == "ACK" and parsed.control_id == "N2"
    assert parsed.first("MSA").value(1) == "AR"  # type: ignore[union-attr]


def test_short_msh2_is_reencoded_with_default_delimiters() -> None:
    m = parse_message("MSH|^~|APP|FAC|||1||ADT^A01|9|P|2.4\rPID|1")
    ack = parse_message(build_ack(m, "AA", now=NOW, control_id="S1"))
    assert ack.msh.value(2) == "^~\\&" and ack.first("MSA").value(2) == "9"  # type: ignore[union-attr]
    assert ack.trigger == "A01"


def test_control_characters_never_reach_the_wire() -> None:
    error = MappingError("207", "boom\x0b\x1c\r\nsecond line")
    ack = build_ack(parse_message(_msg()), "AE", now=NOW, control_id="A\r5", error=error)
    assert "\x0b" not in ack and "\x1c" not in ack and ack.count("\r") == 3
    assert parse_message(ack).first("ERR").value(8) == "boom\nsecond line"  # type: ignore[union-attr]


# (MSH-15, MSH-16, outcome) → the ACK code sent, or None. HL7 v2.5 §2.9.2-2.9.3, table 0155.
MODES = [
    ("", "", "AA", "AA"), ("", "", "AE", "AE"), ("", "", "AR", "AR"),           # original mode
    ("AL", "AL", "AA", "AA"), ("NE", "AL", "AE", "AE"), ("", "AL", "AR", "AR"),
    ("NE", "NE", "AA", None), ("NE", "NE", "AE", None),
    ("AL", "NE", "AA", "CA"), ("AL", "NE", "AE", "CE"), ("AL", "NE", "AR", "CR"),  # commit ACK only
    ("NE", "ER", "AA", None), ("NE", "ER", "AE", "AE"), ("NE", "ER", "AR", "AR"),
    ("NE", "SU", "AA", "AA"), ("NE", "SU", "AE", None),
    ("AL", "ER", "AA", "CA"), ("AL", "SU", "AE", "CE"),
    ("ER", "NE", "AA", None), ("ER", "NE", "AE", "CE"), ("SU", "NE", "AA", "CA"), ("SU", "NE", "AR", None),
    ("AL", "", "AA", "AA"),  # enhanced mode, MSH-16 empty: treated as AL
    ("NE", "", "AE", "AE"),
    ("al", "ne", "AA", "CA"), ("XX", "NE", "AA", "CA"),  # case-insensitive; unknown as AL
]


@pytest.mark.parametrize(("accept", "application", "outcome", "expected"), MODES)
def test_acknowledgement_modes(accept: str, application: str, outcome: str, expected: str | None) -> None:
    message = parse_message(_msg(accept, application))
    assert ack_code(message, outcome) == expected  # type: ignore[arg-type]
    assert ack_requirement(message, outcome) is (expected is not None)  # type: ignore[arg-type]


def test_unparsed_message_is_always_acknowledged() -> None:
    assert ack_code(None, "AR") == "AR" and ack_requirement(None, "AE")
