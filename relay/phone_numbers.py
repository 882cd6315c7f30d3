"""Phone numbers as people write them and as Twilio dials them.

`+1 (555) 123-4567` and `+15551234567` are the same number: spaces, parentheses, dots and dashes
are layout, not digits. Settings (TRANSFER_ALLOWLIST, TWILIO_PHONE_NUMBER) and the transfer tool
compare numbers through these definitions, so both agree on what a number is.
"""

from __future__ import annotations

import re

__all__ = ["NUMBER_PUNCTUATION", "is_dialable", "is_e164", "normalize_number"]

NUMBER_PUNCTUATION = re.compile(r"[\s().\-]")
"""Characters people put in a number for readability."""
_E164 = re.compile(r"\+[1-9]\d{1,14}")
_DIALABLE = re.compile(r"\+?\d{3,15}")


def normalize_number(text: str) -> str:
    """`text` without its layout characters (see NUMBER_PUNCTUATION)."""
    return NUMBER_PUNCTUATION.sub("", text)


def is_e164(text: str) -> bool:
    """`+`, a country code and the number, 2 to 15 digits, no layout: what Twilio's `From` takes."""
    return _E164.fullmatch(text) is not None


def is_dialable(text: str) -> bool:
    """3 to 15 digits, optionally after `+`, once the layout characters are removed."""
    return _DIALABLE.fullmatch(normalize_number(text)) is not None
