"""The NHS number as HL7 v2 senders carry it: which PID-3 repetition it is, and whether it is valid.

Spec: NHS Data Dictionary "NHS NUMBER" (modulus 11 check digit, UK-REFERENCE.md §1) and the NHS ITK
HL7 v2 ADT specification as seen in the wild (UK-REFERENCE.md §3): a CX whose CX-4 (assigning
authority) or CX-5 (identifier type) is NHS, NH, NHSNMBR or NHSNBR.

`engine/nhs_number.py` holds the same check for the API side; `mappings/` may not import `engine/`
(the engine is the I/O side), so this pure module carries its own ten-line check.
"""

from __future__ import annotations

import functools
import re

from mappings.hl7v2.codes import NHS_NUMBER_MARKERS
from mappings.hl7v2.datatypes import FieldLike, comp, sub

_TEN_DIGITS = re.compile(r"[0-9]{10}")
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_NSTS = re.compile(r"NSTS0([1-8])")
_SEPARATORS = re.compile(r"[\s-]")


@functools.lru_cache(maxsize=4096)  # a patient's number recurs in every message about them
def nhs_number_is_valid(value: str) -> bool:
    """True when `value` is ten ASCII digits whose last is the modulus 11 check digit.

    >>> nhs_number_is_valid("9912003888"), nhs_number_is_valid("9449305552")
    (True, True)
    >>> nhs_number_is_valid("9912003814"), nhs_number_is_valid("4123456879")
    (False, False)
    """
    if _TEN_DIGITS.fullmatch(value) is None:
        return False
    check = 11 - sum(int(d) * w for d, w in zip(value, _WEIGHTS)) % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(value[9])


def normalise_nhs_number(value: str) -> str:
    """Spaces and dashes removed ("991 200 3888" → "9912003888"): senders sometimes send the display form."""
    return _SEPARATORS.sub("", value)


def is_nhs_number_cx(f: FieldLike) -> bool:
    """Whether a PID-3 repetition is the NHS number: CX-4 (namespace or universal id) or CX-5 is an NHS marker.

    Covers `9219068409^^^NHS^NH`, `2269030303^^^^NHSNMBR`, `3333333333^^^NHS`, `^^^NHSNMBR`.
    """
    markers = {sub(f, 4, 1).upper(), sub(f, 4, 2).upper(), comp(f, 5).upper()}
    return bool(markers & NHS_NUMBER_MARKERS)


def verification_code(pid32: str) -> str | None:
    """PID-32 identity reliability code NSTS01–NSTS08 → UK Core verification status 01–08, else None.

    >>> verification_code("NSTS02"), verification_code("NSTS09"), verification_code("")
    ('02', None, None)
    """
    match = _NSTS.fullmatch(pid32.strip().upper())
    return f"0{match.group(1)}" if match else None


def mask(value: str) -> str:
    """A form safe for error text and logs: all but the last four digits starred (at most ten stars);
    a tail that is not digits is starred too, so a name sent in the wrong field is never echoed."""
    tail = value[-4:]
    if not value:
        return "(empty)"
    if len(value) <= 4 or not (tail.isascii() and tail.isdigit()):
        return "*" * min(len(value), 10)
    return "*" * min(len(value) - 4, 10) + tail
