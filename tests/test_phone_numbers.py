"""Phone numbers: layout characters are not digits, E.164 is what Twilio's `From` takes, and a
dialable number is 3 to 15 digits once the layout is gone."""

from __future__ import annotations

from relay.phone_numbers import is_dialable, is_e164, normalize_number


def test_layout_characters_are_removed() -> None:
    assert normalize_number("+1 (555) 123-4567") == "+15551234567"
    assert normalize_number("555.123.4567\t") == "5551234567"
    assert normalize_number("sales") == "sales"


def test_e164_is_plus_country_code_and_digits_without_layout() -> None:
    assert is_e164("+15551234567")
    assert is_e164("+44")  # the shortest: a country code and one digit
    for bad in ("15551234567", "+0551234567", "+1 555 123 4567", "+1234567890123456", "+1555\n"):
        assert not is_e164(bad), bad


def test_dialable_allows_layout_and_an_optional_plus() -> None:
    assert is_dialable("+1 (555) 123-4567")
    assert is_dialable("911")
    for bad in ("12", "+1234567890123456", "sales", "+1-555-CALL-NOW", ""):
        assert not is_dialable(bad), bad
