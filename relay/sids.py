"""Twilio SIDs: two letters naming the kind, then 32 hex digits (34 characters in all).

Every SID taken from a request is checked here before it is logged, bound to a call's log
context or stored: a SID that does not have this shape is not a SID, whatever else it is.
"""

from __future__ import annotations

import re

_HEX32 = "[0-9a-fA-F]{32}"
CALL_SID = re.compile(f"CA{_HEX32}")
ACCOUNT_SID = re.compile(f"AC{_HEX32}")
STREAM_SID = re.compile(f"MZ{_HEX32}")


def is_call_sid(value: object) -> bool:
    """`CA` + 32 hex digits."""
    return isinstance(value, str) and CALL_SID.fullmatch(value) is not None


def is_account_sid(value: object) -> bool:
    """`AC` + 32 hex digits."""
    return isinstance(value, str) and ACCOUNT_SID.fullmatch(value) is not None


def is_stream_sid(value: object) -> bool:
    """`MZ` + 32 hex digits."""
    return isinstance(value, str) and STREAM_SID.fullmatch(value) is not None
