"""NHS number: the modulus 11 check digit, and masking for anything that may be logged.

Spec: NHS Data Dictionary, "NHS NUMBER" — ten digits, the tenth a modulus 11 check digit over the
first nine with weights 10, 9, …, 2 (see /work/shared/UK-REFERENCE.md §1). UK Core Patient carries it
as `identifier` with system `NHS_NUMBER_SYSTEM`.

Pure: no I/O, no clock. Values are strict: exactly ten ASCII digits, no spaces or dashes — the
display form "999 123 4567" is for people, never for the wire.
"""

from __future__ import annotations

import re

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"

_TEN_DIGITS = re.compile(r"[0-9]{10}")
_NINE_DIGITS = re.compile(r"[0-9]{9}")
# Weights for digits 1..9 (Data Dictionary: "multiply each of the first nine digits by a weighting factor").
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def _check_digit(nine_digits: str) -> int | None:
    """The check digit for nine ASCII digits, or None when the remainder gives 10 (no valid number)."""
    total = sum(int(digit) * weight for digit, weight in zip(nine_digits, _WEIGHTS))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    return None if check == 10 else check


def nhs_number_is_valid(value: str) -> bool:
    """True when `value` is exactly ten ASCII digits whose last digit is the modulus 11 check digit.

    >>> nhs_number_is_valid("9912003888")
    True
    >>> nhs_number_is_valid("9912003814")
    False
    >>> nhs_number_is_valid("991 200 3888")   # display form: not accepted
    False
    """
    # fullmatch, not match + "$": "$" would also accept a trailing newline; [0-9] not \d: \d accepts
    # non-ASCII digits such as Arabic-Indic ones.
    if not isinstance(value, str) or _TEN_DIGITS.fullmatch(value) is None:
        return False
    return _check_digit(value[:9]) == int(value[9])


def with_check_digit(nine_digits: str) -> str | None:
    """Append the check digit to nine ASCII digits; None when those nine digits have no valid number.

    Raises ValueError when `nine_digits` is not exactly nine ASCII digits.

    >>> with_check_digit("991200388")
    '9912003888'
    """
    if not isinstance(nine_digits, str) or _NINE_DIGITS.fullmatch(nine_digits) is None:
        raise ValueError("with_check_digit needs exactly nine ASCII digits")
    check = _check_digit(nine_digits)
    return None if check is None else nine_digits + str(check)


def mask_nhs_number(value: object) -> str:
    """A form safe for error text and logs: every character but the last four digits becomes '*'.

    The last four are kept only when they are digits, so a name typed into the wrong field is never echoed.

    >>> mask_nhs_number("9912003814")
    '******3814'
    """
    text = value if isinstance(value, str) else ""
    tail = text[-4:]
    if not text:
        return "(empty)"
    # At most ten stars: the mask should not grow with whatever junk was sent.
    if len(text) <= 4 or not tail.isascii() or not tail.isdigit():
        return "*" * min(len(text), 10)
    return "*" * min(len(text) - 4, 10) + tail
