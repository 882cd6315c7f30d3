"""PlaybackTracker: marks, generations and the truncation point, with an injected clock."""

from relay.sessions.playback import PlaybackTracker


def send(tracker: PlaybackTracker, item: str, ms: int, now: float) -> str:
    return tracker.on_audio_sent(item, ms * 8, now)


def test_marks_acknowledge_item_time() -> None:
    t = PlaybackTracker()
    m1 = send(t, "a", 100, 0.0)
    m2 = send(t, "a", 100, 0.0)
    assert t.on_mark(m1, 0.1)
    assert t.heard_ms("a", 0.1) == 100
    assert t.on_mark(m2, 0.2)
    assert not t.outstanding
    assert t.heard_ms("a", 5.0) == 200


def test_heard_extrapolates_within_playing_chunk_but_not_beyond() -> None:
    t = PlaybackTracker()
    m1 = send(t, "a", 100, 0.0)
    send(t, "a", 400, 0.0)
    t.on_mark(m1, 0.1)
    assert t.heard_ms("a", 0.25) == 250  # 100 acked + 150 elapsed
    assert t.heard_ms("a", 9.0) == 500  # capped at what was sent


def test_interrupt_cuts_at_heard_and_bumps_generation() -> None:
    t = PlaybackTracker()
    m1 = send(t, "a", 100, 0.0)
    m2 = send(t, "a", 100, 0.0)
    t.on_mark(m1, 0.1)
    cut = t.interrupt(0.13)
    assert cut is not None and cut.item_id == "a"
    assert cut.audio_end_ms == 130 and cut.sent_ms == 200
    # Twilio echoes the pending mark after `clear`: it is not evidence of playback.
    assert not t.on_mark(m2, 0.14)
    assert t.generation == 1


def test_interrupt_with_nothing_sent_returns_none() -> None:
    t = PlaybackTracker()
    assert t.interrupt(1.0, "x") is None


def test_interrupt_before_first_chunk_played_is_zero() -> None:
    t = PlaybackTracker()
    send(t, "a", 200, 1.0)
    cut = t.interrupt(1.0)
    assert cut is not None and cut.audio_end_ms == 0


def test_later_items_queued_are_unheard() -> None:
    t = PlaybackTracker()
    send(t, "a", 100, 0.0)
    send(t, "b", 100, 0.0)
    cut = t.interrupt(0.05)
    assert cut is not None and cut.item_id == "a" and cut.unheard == ("b",)
    assert t.heard_ms("b", 0.05) == 0


def test_gap_in_delivery_restarts_clock_at_send_time() -> None:
    t = PlaybackTracker()
    m1 = send(t, "a", 100, 0.0)
    t.on_mark(m1, 0.1)
    send(t, "a", 100, 0.5)  # arrived after the queue ran dry
    assert t.heard_ms("a", 0.55) == 150


def test_prefixed_trackers_ignore_each_others_marks() -> None:
    a, b = PlaybackTracker(), PlaybackTracker(prefix="c")
    ma = send(a, "x", 100, 0.0)
    mb = send(b, "y", 100, 0.0)
    assert ma == "0:1" and mb == "c0:1"
    assert not b.on_mark(ma, 0.1) and b.outstanding
    assert b.on_mark(mb, 0.1) and not b.outstanding


def test_unmarked_audio_joins_the_next_mark_and_counts_as_outstanding() -> None:
    t = PlaybackTracker()
    assert t.on_audio_sent("a", 160, 0.0, mark=False) is None
    assert t.on_audio_sent("a", 160, 0.0, mark=False) is None
    assert t.outstanding and t.unmarked_ms() == 40
    assert t.heard_ms("a", 0.03) == 30  # extrapolated inside the unmarked audio, capped at 40
    name = t.mark(0.0)
    assert name == "0:1" and t.unmarked_ms() == 0 and t.mark(0.0) is None
    assert t.on_mark(name, 0.04) and not t.outstanding and t.heard_ms("a", 1.0) == 40
    t.on_audio_sent("a", 160, 1.0, mark=False)
    t.on_audio_sent("b", 160, 1.0, mark=False)  # a new item closes the previous one's mark
    assert t.mark(1.0) == "0:3" and t.pending_items() == {"a", "b"}
