"""relay.placeholders: `{name}` placeholders found, filled and checked, and a context bounded."""

from __future__ import annotations

import pytest

from relay.placeholders import (
    BUILTIN_NAMES,
    ContextError,
    call_values,
    check_context,
    configured_texts,
    fill,
    has_placeholders,
    placeholder_names,
    texts_for_call,
    unknown_placeholders,
)
from tests.conftest import make_settings


def test_names_are_found_in_order_once_and_other_braces_are_text() -> None:
    text = 'Call {name} ({name}) about {order_id}; reply as {"ok": true} or {{literal}} or { spaced }.'
    assert placeholder_names(text) == ["name", "order_id"]
    assert not has_placeholders('{"ok": true} and { spaced }')
    assert has_placeholders("{{literal}}") and has_placeholders("hi {x}")


def test_fill_replaces_known_names_unknown_ones_by_nothing_and_unescapes_braces() -> None:
    text = 'Hello {name}, order {order}. {{name}} stays; JSON {"a": 1} stays.'
    filled = fill(text, {"name": "Ada", "order": "42"})
    assert filled == 'Hello Ada, order 42. {name} stays; JSON {"a": 1} stays.'
    assert fill("Hi {name}!", {}) == "Hi !"
    assert fill("{a}{b}", {"a": "{b}", "b": "x"}) == "{b}x"  # a value is never filled again


def test_unknown_placeholders_name_the_setting() -> None:
    texts = {"INSTRUCTIONS": "{name} {caller}", "GREETING": "Hi {nick}", "VOICEMAIL_MESSAGE": "{name}"}
    assert unknown_placeholders(texts, {"name", "caller"}) == [("GREETING", "nick")]


def test_configured_texts_leave_out_a_disabled_greeting() -> None:
    settings = make_settings(greeting="Hi {nick}", greeting_enabled=False, voicemail_message="")
    assert set(configured_texts(settings)) == {"INSTRUCTIONS", "VOICEMAIL_MESSAGE"}


def test_texts_for_call_fill_all_three_with_the_relays_own_values() -> None:
    settings = make_settings(
        instructions="{direction} call from {caller} to {called} for {name}",
        greeting="Greet {name}",
        voicemail_message="Bye {name}",
    )
    values = call_values({"name": "Ada"}, caller="+15550001111", called="+15550002222", direction="inbound")
    texts = texts_for_call(settings, values)
    assert texts.instructions == "inbound call from +15550001111 to +15550002222 for Ada"
    assert (texts.greeting, texts.voicemail_message) == ("Greet Ada", "Bye Ada")


def test_now_is_the_answer_time_in_words_utc() -> None:
    settings = make_settings(instructions="Today is {now}.", greeting="Hi", voicemail_message="")
    values = call_values({}, caller="", called="", direction="inbound", now=1_796_503_860.0)
    assert texts_for_call(settings, values).instructions == "Today is Saturday 05 December 2026, 20:51 UTC."
    assert "now" in BUILTIN_NAMES  # so POST /calls accepts it without a context key


def test_a_context_is_text_by_name_and_bounded() -> None:
    assert check_context(None) == {}
    assert check_context({"name": "Ada", "n": 3, "vip": True, "x": 1.5}) == {
        "name": "Ada",
        "n": "3",
        "vip": "true",
        "x": "1.5",
    }
    for bad, reason in [
        ("Ada", "JSON object"),
        ({"9lives": "x"}, "not a placeholder name"),
        ({"a" * 65: "x"}, "at most 64 characters"),
        ({"direction": "x"}, "the relay's own"),
        ({"name": None}, "a string, a number or a boolean"),
        ({"name": "x" * 1001}, "at most 1000"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32"),
    ]:
        with pytest.raises(ContextError, match=reason):
            check_context(bad)
