import pytest

from relay.config import load_settings
from relay.errors import StreamAuthError
from webhooks.token import mint_stream_token, verify_stream_token

S = load_settings(_env_file=None, twilio_auth_token="secret")


def test_round_trip() -> None:
    verify_stream_token(mint_stream_token("CA1", S), "CA1", S)


@pytest.mark.parametrize(
    ("token_for", "verify_as", "settings", "at", "why"),
    [
        ("CA1", "CA2", S, None, "another call"),
        ("CA1", "CA1", load_settings(_env_file=None, twilio_auth_token="other"), None, "signature"),
        ("CA1", "CA1", S, 10**10, "expired"),
    ],
)
def test_rejections(token_for, verify_as, settings, at, why) -> None:
    token = mint_stream_token(token_for, S)
    with pytest.raises(StreamAuthError, match=why):
        verify_stream_token(token, verify_as, settings, now=at)


def test_a_token_lives_at_least_its_ttl_and_at_most_a_second_more() -> None:
    short = load_settings(_env_file=None, twilio_auth_token="secret", stream_token_ttl=1.0)
    token = mint_stream_token("CA1", short, now=10.95)  # just before a whole second
    verify_stream_token(token, "CA1", short, now=11.94)
    verify_stream_token(token, "CA1", short, now=12.0)
    with pytest.raises(StreamAuthError, match="expired"):
        verify_stream_token(token, "CA1", short, now=12.01)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "YQ.YQ"])
def test_malformed(token: str) -> None:
    with pytest.raises(StreamAuthError):
        verify_stream_token(token, "CA1", S)
