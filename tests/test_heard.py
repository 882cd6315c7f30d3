"""What the caller heard of the agent's words: the transcript cut by the heard fraction of the
audio (relay.sessions.heard), shared by both paths."""

from __future__ import annotations

from relay.sessions.heard import MS_PER_SYLLABLE, SpokenItem, WordTiming, heard_words, spoken_ms, word_weight


def test_words_weigh_by_syllables_and_pauses_not_letters() -> None:
    assert word_weight("strength") == 1  # eight letters, one syllable
    assert word_weight("area") == 2  # four letters, two vowel groups... a-rea
    assert word_weight("Hello,") == 2.5  # two syllables and a comma's pause
    assert word_weight("done.") == 2.0  # a silent final e, and a full stop's pause
    assert word_weight("table") == 2  # but not in "-le"
    assert word_weight("1984") == 8  # digits are said as words


def test_the_heard_fraction_of_the_audio_picks_the_words() -> None:
    text = "I can help you with that now"  # seven one-syllable words
    assert heard_words(text, 450, 1000) == "I can help"  # 3.15 words' worth: the fourth not half heard
    assert heard_words(text, 500, 1000) == "I can help you"  # 3.5: half of the fourth
    assert heard_words(text, 1000, 1000) == text
    assert heard_words(text, 0, 1000) == ""
    assert heard_words(text, 2000, 1000) == text


def test_a_long_word_takes_its_share_of_the_audio() -> None:
    # By letters, "a" and "b" would be heard within the first tenth; by syllables the five-syllable
    # word takes most of the audio, so a fifth of it does not reach past it.
    text = "uncomfortable a b"  # un-com-for-ta-ble (5), a (1), b (1)
    assert heard_words(text, 200, 1000) == ""
    assert heard_words(text, 700, 1000) == "uncomfortable"
    assert heard_words(text, 790, 1000) == "uncomfortable a"


def test_word_timings_decide_when_the_provider_gives_them() -> None:
    timings = [WordTiming("Hello", 400), WordTiming("there", 900), WordTiming("friend", 1500)]
    assert heard_words("Hello there friend", 1000, 1500, timings) == "Hello there"


def test_an_item_still_arriving_is_measured_by_its_estimated_length() -> None:
    item = SpokenItem("one two three four")  # four syllables: 800 ms at the typical rate
    assert spoken_ms(item.text) == 4 * MS_PER_SYLLABLE
    # 400 ms sent and all of it heard: half of the estimated whole, not all of the words
    assert item.heard(400, 400) == "one two"
    item.audio_done = True  # all of its audio was sent: the real length decides
    assert item.heard(400, 400) == "one two three four"
