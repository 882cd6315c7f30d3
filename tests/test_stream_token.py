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


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "YQ.YQ"])
def test_malformed(token: str) -> None:
    with pytest.raises(StreamAuthError):
        verify_stream_token(token, "CA1", S)
