"""NHS number modulus 11 check digit (NHS Data Dictionary; UK-REFERENCE.md §1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.nhs_number import NHS_NUMBER_SYSTEM, mask_nhs_number, nhs_number_is_valid, with_check_digit

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


def test_system_uri() -> None:
    assert NHS_NUMBER_SYSTEM == "https://fhir.nhs.uk/Id/nhs-number"


@pytest.mark.parametrize("value", ["9912003888", "9449305552"])
def test_reference_numbers_are_valid(value: str) -> None:
    assert nhs_number_is_valid(value)


@pytest.mark.parametrize("value", ["4123456879", "9912003814"])
def test_public_example_numbers_are_invalid(value: str) -> None:
    # Both appear in public examples with wrong check digits: never treat them as valid.
    assert not nhs_number_is_valid(value)


@pytest.mark.parametrize("value", [
    "",
    "991200388",  # nine digits
    "99120038880",  # eleven digits
    "991 200 3888",  # display form
    "991-200-3888",
    " 9912003888",
    "9912003888\n",  # "$"-style regexes would accept this
    "٩٩١٢٠٠٣٨٨٨",  # Arabic-Indic digits: str.isdigit() is True, but not ASCII
    "99120O3888",  # letter O
])
def test_malformed_values_are_invalid(value: str) -> None:
    assert not nhs_number_is_valid(value)


def test_non_strings_are_invalid() -> None:
    assert not nhs_number_is_valid(9912003888)  # type: ignore[arg-type]
    assert not nhs_number_is_valid(None)  # type: ignore[arg-type]


def test_check_digit_of_eleven_becomes_zero() -> None:
    # Sum 0 -> remainder 0 -> 11 - 0 = 11, which the rule maps to 0.
    assert with_check_digit("000000000") == "0000000000"
    assert nhs_number_is_valid("0000000000")


def test_check_digit_of_ten_has_no_number() -> None:
    # Ninth digit 6 at weight 2: sum 12 -> remainder 1 -> 11 - 1 = 10, so no NHS number starts this way.
    assert with_check_digit("000000006") is None
    assert not any(nhs_number_is_valid("000000006" + d) for d in "0123456789")


def test_with_check_digit_rejects_bad_input() -> None:
    for bad in ["", "12345678", "1234567890", "12345678a", "١٢٣٤٥٦٧٨٩"]:
        with pytest.raises(ValueError):
            with_check_digit(bad)


@given(nine_digits)
def test_with_check_digit_gives_a_valid_number_or_none(nine: str) -> None:
    number = with_check_digit(nine)
    if number is None:
        # No tenth digit at all makes these nine digits valid.
        assert not any(nhs_number_is_valid(nine + d) for d in "0123456789")
    else:
        assert number[:9] == nine and nhs_number_is_valid(number)


@given(nine_digits, st.integers(min_value=0, max_value=9), st.integers(min_value=1, max_value=9))
def test_changing_any_single_digit_invalidates(nine: str, position: int, delta: int) -> None:
    number = with_check_digit(nine)
    if number is None:
        return
    changed_digit = str((int(number[position]) + delta) % 10)
    changed = number[:position] + changed_digit + number[position + 1:]
    assert changed != number
    assert not nhs_number_is_valid(changed)


def test_mask_keeps_only_the_last_four_digits() -> None:
    assert mask_nhs_number("9912003814") == "******3814"
    assert "9912" not in mask_nhs_number("9912003814")
    assert mask_nhs_number("Jane Smith") == "**********"  # not digits: nothing echoed
    assert mask_nhs_number("123") == "***"
    assert mask_nhs_number("") == "(empty)"
    assert mask_nhs_number(None) == "(empty)"
    assert len(mask_nhs_number("1" * 1000)) == 14  # the mask does not grow with the input
