"""Settings: validation messages name the variable and the fix; secrets never show."""

import logging

import pytest

from relay.config import load_settings
from relay.errors import ConfigError


def settings(**kw: object):
    return load_settings(_env_file=None, **kw)


def test_defaults() -> None:
    s = settings()
    assert s.relay_mode == "auto" and not s.use_azure_openai and s.max_concurrent_calls == 100
    assert s.openai_base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("my-res.openai.azure.com", "https://my-res.openai.azure.com"),
        ("https://my-res.openai.azure.com/", "https://my-res.openai.azure.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_azure_endpoint_normalized_once(endpoint: str, expected: str) -> None:
    s = settings(use_azure_openai=True, azure_openai_endpoint=endpoint, azure_openai_deployment="d")
    assert s.azure_openai_endpoint == expected


def test_azure_without_endpoint_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        settings(use_azure_openai=True)


def test_azure_without_deployment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_DEPLOYMENT"):
        settings(use_azure_openai=True, azure_openai_endpoint="x.openai.azure.com")


def test_public_url_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        settings(public_url="abc.ngrok.app")
    assert settings(public_url=" https://abc.ngrok.app/ ").public_url == "https://abc.ngrok.app"


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="RELAY_MODE"):
        settings(relay_mode="sometimes")


def test_env_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_AZURE_OPENAI", "true")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "gpt-realtime")
    monkeypatch.setenv("AZURE_API_VERSION", "2025-04-01-preview")
    s = settings()
    assert s.use_azure_openai and s.azure_preview and s.describe_provider() == "Azure OpenAI"


def test_secrets_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    s = settings(
        openai_api_key="sk-supersecret", twilio_auth_token="tok-secret", azure_openai_api_key="az-secret"
    )
    text = repr(s) + str(s) + s.model_dump_json()
    logging.getLogger("t").warning("settings: %s", s)
    for secret in ("sk-supersecret", "tok-secret", "az-secret"):
        assert secret not in text and secret not in caplog.text


def test_transfer_allowlist_parsing() -> None:
    s = settings(transfer_allowlist="+15551230000, Sales=+15557654321")
    assert s.transfer_targets == {
        "+15551230000": "+15551230000",
        "sales": "+15557654321",
        "+15557654321": "+15557654321",
    }


def test_env_example_documents_every_setting_with_its_default() -> None:
    from pathlib import Path

    from dotenv import dotenv_values

    from relay.config import Settings

    example = dotenv_values(Path(__file__).parent.parent / ".env.example")
    fields = {name.upper() for name in Settings.model_fields}
    assert fields == set(example), f"missing: {fields - set(example)}, extra: {set(example) - fields}"
    defaults = load_settings(_env_file=None)
    from_example = load_settings(_env_file=Path(__file__).parent.parent / ".env.example")
    assert from_example.model_dump() == defaults.model_dump()


def test_readme_configuration_table_lists_every_setting() -> None:
    from pathlib import Path

    from relay.config import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
