"""HL7 v2 parse rate: sharedcare's parser against a plain split (the floor), python-hl7 and hl7apy.

    .venv/bin/python bench/hl7_parse.py [seconds-per-row]

Each row parses the same ~1.5 KB UK ADT^A01 (distinct control ids, so no caching helps). "parse" is
`parse_message` alone; "parse + read" also reads the header and a dozen PID/PV1 values, as a map
would. python-hl7 and hl7apy are measured only if installed (hl7apy for a few iterations).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.parser import parse_message

_ADT_A01_SEGMENTS = (
    ("MSH|^~\\&|PAS|RX1^2.16.840.1.113883.2.1.3.2.4.17.999^ISO|SHAREDCARE|CITY|20240501120000||"
     "ADT^A01^ADT_A01|{id}|P|2.4|||AL|NE|GBR|UNICODE UTF-8|EN"),
    "EVN|A01|20240501115900|||C1234^SMITH^JANE^^^DR|20240501115500",
    ("PID|1||9449306613^^^NHS^NH~RX1000123^^^RX1^MR||JONES^MARY^ELIZABETH^^MRS^^L~SMITH^MARY^^^^^M||"
     "19650412|F|||12 HIGH STREET^FLAT 3^LEEDS^WEST YORKSHIRE^LS1 4AB^GBR^H~"
     "4 OLD ROAD^^YORK^^YO1 7HH^GBR^C||0113 496 0000^PRN^PH~07700 900123^ORN^CP~mary\\E\\jones@example.org^NET^Internet|"
     "0113 496 0999^WPN^PH|ENG^English^ISO639|M^Married^HL70002|C^Church of England^HL70006|"
     "RX1V0099887|||A^White - British^NHS||||||||N|||20240501115900||||||NSTS01"),
    "PD1|||LEEDS MEDICAL PRACTICE^^B86001|G8123456^BROWN^ALAN^^^DR",
    ("NK1|1|JONES^PETER^^^MR|SPO^Spouse^HL70063|12 HIGH STREET^FLAT 3^LEEDS^^LS1 4AB^GBR^H|"
     "0113 496 0001^PRN^PH||NOK^Next of kin^HL70131"),
    ("PV1|1|I|RX1^WARD 12^BED 4^ST JAMES|21^Emergency A&E^NHS|||C1234^SMITH^JANE^^^DR^^^GMC^^^^CONS|"
     "G8123456^BROWN^ALAN^^^DR||300^General Medicine^NHS||||19^Usual place of residence^NHS|||"
     "C1234^SMITH^JANE^^^DR||RX1V0099887^^^RX1^VN|||||||||||||||||||||RX1||||||20240501115500"),
    "PV2|||R07.4^Chest pain, unspecified^I10||||||||||||||||||||||||||||||||||||||||N",
    "AL1|1|DA|PENICILLIN^Penicillin^L|SV|Anaphylaxis|20010101",
    "DG1|1||R07.4^Chest pain, unspecified^I10||20240501115500|A",
    "ZU1|20240501115500|N|Y||Admitted via ED|extra",
    "ZU3|||Ward transfer pending",
    "ZU5|1|Brought in by ambulance; family informed; interpreter not required; NOK aware",
    "ZU8|1|Note: patient prefers to be called Liz",
)
ADT_A01 = "\r".join(_ADT_A01_SEGMENTS)


def _messages(n: int) -> list[str]:
    return [ADT_A01.replace("{id}", f"MSG{i:08d}") for i in range(n)]


def _plain_split(text: str) -> object:
    """The floor: every segment split into fields, every field into components."""
    return [[f.split("^") for f in line.split("|")] for line in text.split("\r")]


def _parse_and_read(text: str) -> object:
    m = parse_message(text)
    pid, pv1 = m.first("PID"), m.first("PV1")
    assert pid is not None and pv1 is not None
    return (m.message_code, m.trigger, m.control_id, m.sending_facility, m.version,
            [r.components for r in pid.repetitions(3)], pid.value(5), pid.value(5, 2), pid.value(7),
            pid.value(8), pid.value(11, 5), pv1.value(2), pv1.value(3, 2), pv1.value(19), pv1.value(44))


def _rate(fn: Callable[[str], object], messages: list[str], seconds: float, cap: int = 10**9) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and done < cap:
        for text in messages[: min(len(messages), cap - done)]:
            fn(text)
        done += min(len(messages), cap - done)
    return done / (time.perf_counter() - start)


def main(seconds: float = 1.0) -> None:
    messages = _messages(2000)
    rows: list[tuple[str, float]] = [
        ("str.split (floor: segments, fields, components)", _rate(_plain_split, messages, seconds)),
        ("sharedcare parse_message", _rate(parse_message, messages, seconds)),
        ("sharedcare parse_message + read 15 values", _rate(_parse_and_read, messages, seconds)),
    ]
    try:
        import hl7  # type: ignore[import-untyped]

        rows.append(("python-hl7 hl7.parse", _rate(hl7.parse, messages, seconds)))
    except ImportError:
        rows.append(("python-hl7 (not installed)", 0.0))
    try:
        from hl7apy.parser import parse_message as hl7apy_parse  # type: ignore[import-untyped]

        rows.append(("hl7apy parse_message (20 iterations)",
                      _rate(hl7apy_parse, messages, seconds, cap=20)))
    except ImportError:
        rows.append(("hl7apy (not installed)", 0.0))
    print(f"message: ADT^A01, {len(messages[0].encode())} bytes, {messages[0].count(chr(13)) + 1} segments")
    print(f"{'parser':<50} {'messages/s':>12}")
    for name, rate in rows:
        print(f"{name:<50} {rate:>12,.0f}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
