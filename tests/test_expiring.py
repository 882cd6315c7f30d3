"""The bounded, expiring key set shared by the early connections and the stream replay checks."""

from __future__ import annotations

from relay.expiring import ExpiringKeys


def test_keys_are_remembered_until_their_deadline_and_bounded_oldest_first() -> None:
    keys: ExpiringKeys[str] = ExpiringKeys(max_keys=3)
    keys.add("a", until=10.0, now=0.0)
    keys.add("b", until=20.0, now=1.0)
    assert keys.contains("a", now=9.9) and not keys.contains("a", now=10.0)  # a deadline is exclusive
    assert len(keys) == 1  # "a" was forgotten as the set was used
    keys.add("c", until=30.0, now=11.0)
    keys.add("d", until=40.0, now=12.0)
    keys.add("e", until=50.0, now=13.0)  # a fourth live key: the oldest ("b") goes
    assert not keys.contains("b", now=13.0) and len(keys) == 3
    keys.add("c", until=60.0, now=14.0)  # added again: newer deadline, newest end
    keys.add("f", until=70.0, now=15.0)
    assert keys.contains("c", now=55.0) and not keys.contains("d", now=15.0)


def test_values_are_kept_until_their_deadline_bounded_and_popped_once() -> None:
    from relay.expiring import ExpiringValues

    values: ExpiringValues[str, int] = ExpiringValues(max_keys=2)
    values.put("a", 1, until=10.0, now=0.0)
    values.put("b", 2, until=20.0, now=1.0)
    assert values.get("a", now=5.0) == 1 and values.get("a", now=10.0) is None
    values.put("c", 3, until=30.0, now=11.0)
    values.put("d", 4, until=40.0, now=12.0)  # past two: the oldest ("b") goes, value and all
    assert values.get("b", now=12.0) is None and len(values) == 2
    assert values.pop("c") == 3 and values.pop("c") is None
    assert values.get("d", now=13.0) == 4
