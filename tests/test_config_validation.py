"""Every setting is validated: a bad value stops the relay with a message naming the variable, the
bad value (never a secret's) and the fix; `relay serve` prints it without a traceback and exits 2,
and `relay doctor` reports it as a FAIL line."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from relay.cli import main
from relay.config import load_settings
from relay.errors import ConfigError

# (variable, bad value, what the message must say besides the variable: the value or the fix)
BAD_VALUES = [
    ("LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("LOG_LEVEL", "verbose", "'verbose'"),
    ("LOG_FORMAT", "xml", "'text', 'json'"),
    ("RELAY_MODE", "sometimes", "'realtime', 'cascade', 'auto'"),
    ("TURN_DETECTION", "vad", "'server_vad', 'semantic_vad'"),
    ("VAD_EAGERNESS", "max", "'low', 'medium', 'high', 'auto'"),
    ("NOISE_REDUCTION", "loud", "'near_field', 'far_field', 'off'"),
    ("SLOW_TOOL_FEEDBACK", "music", "'tone', 'none'"),
    ("USE_AZURE_OPENAI", "maybe", "true or false"),
    ("GREETING_ENABLED", "sometimes", "true or false"),
    ("REALTIME_PRECONNECT", "2", "true or false"),
    ("VAD_THRESHOLD", "1.5", "from 0 to 1"),
    ("VAD_PREFIX_PADDING_MS", "-1", "from 0 to 10000"),
    ("VAD_SILENCE_DURATION_MS", "500ms", "whole number from 0 to 10000"),
    ("REALTIME_SESSION_MAX_MINUTES", "0", "greater than 0"),
    ("PROVIDER_CONNECT_TIMEOUT", "0", "greater than 0 and at most 60"),
    ("PROVIDER_CONNECT_TIMEOUT", "5000", "at most 60"),
    ("PROVIDER_FIRST_EVENT_TIMEOUT", "0", "greater than 0 and at most 60"),
    ("PROVIDER_HEARTBEAT_AFTER", "-2", "greater than 0 and at most 60"),
    ("PROVIDER_HEARTBEAT_TIMEOUT", "120", "at most 60"),
    ("PROVIDER_MALFORMED_LIMIT", "0", "from 1 to 10000"),
    ("CASCADE_SILENCE_MS", "50", "from 100 to 10000"),
    ("CASCADE_MIN_SPEECH_MS", "5", "from 20 to 10000"),
    ("CASCADE_VAD_AGGRESSIVENESS", "4", "from 0 to 3"),
    ("SLOW_TOOL_AFTER", "-1", "from 0 to 60"),
    ("DTMF_TIMEOUT_MS", "50", "from 100 to 30000"),
    ("DTMF_TOOL", "sometimes", "true or false"),
    ("STREAM_TOKEN_TTL", "0", "greater than 0"),
    ("TWILIO_API_TIMEOUT", "0", "greater than 0 and at most 60"),
    ("STREAM_TOKEN_TTL", "60000", "at most 3600"),
    ("CALL_RECORD_TTL_DAYS", "-7", "greater than 0"),
    ("MAX_CONCURRENT_CALLS", "0", "from 1 to 100000"),
    ("MAX_CONCURRENT_CALLS", "lots", "whole number"),
    ("CALL_SLOT_TTL", "0.5", "from 1 to 3600"),
    ("MAX_CALL_DURATION", "0", "greater than 0"),
    ("DRAIN_TIMEOUT", "-5", "at least 0"),
    ("FORWARDED_ALLOW_IPS", "10.0.0.300", "not an IP address or network"),
    ("STREAM_PUBLIC_URL", "https://voice.example.com/media-stream", "wss://"),
    ("STREAM_PUBLIC_URL", "wss://voice.example.com/i/relay-2", "ending with /media-stream"),
    ("HTTP_HEADER_TIMEOUT", "0", "greater than 0 and at most 120"),
    ("WEBHOOK_BODY_TIMEOUT", "600", "at most 120"),
    ("HTTP_MAX_HEADER_BYTES", "100", "at least 1024"),
    ("HTTP_MAX_CONNECTIONS", "-1", "at least 0"),
    ("PORT", "0", "from 1 to 65535"),
    ("PORT", "http", "whole number from 1 to 65535"),
    ("HOST", "", "at least 1 character"),
    ("OPENAI_BASE_URL", "ftp://api.example.com", "'https://host[:port][/path]'"),
    ("OPENAI_BASE_URL", "", "remove the line"),
    ("TAVILY_BASE_URL", "https:///search", "not a valid URL"),
    ("TWILIO_API_BASE_URL", "ws://api.twilio.com", "not a valid URL"),
    ("PUBLIC_URL", "abc.ngrok.app", "'https://abc123.ngrok.app'"),
    ("REALTIME_WEBSOCKET_BASE_URL", "proxy/v1", "'wss://proxy/v1'"),
    ("AZURE_TOKEN_SCOPE", "cognitiveservices", "https://cognitiveservices.azure.com/.default"),
    ("AZURE_API_VERSION", "latest", "'2025-04-01-preview'"),
    ("AZURE_CASCADE_API_VERSION", "", "'2025-03-01-preview'"),
    ("OPENAI_REALTIME_MODEL", " ", "'gpt-realtime'"),
    ("OPENAI_VOICE", "", "'marin'"),
    ("OPENAI_STT_MODEL", "", "'gpt-4o-mini-transcribe'"),
    ("OPENAI_CHAT_MODEL", "  ", "'gpt-4o-mini'"),
    ("OPENAI_TTS_MODEL", "", "'gpt-4o-mini-tts'"),
    ("TWILIO_ACCOUNT_SID", "AC123", "'AC' and 32 hex digits"),
    ("TWILIO_PHONE_NUMBER", "555-1234", "'+15551234567'"),
    ("OUTBOUND_MACHINE_DETECTION", "maybe", "true or false"),
    ("RECORD_CALLS", "sometimes", "true or false"),
    ("RECORDING_WAIT_S", "-1", "from 0 to 600"),
    ("RELAY_TOOLS", "my-tools.py", "importable modules"),
    ("TRANSFER_ALLOWLIST", "sales=front desk", "'+15551234567,sales=+15557654321'"),
    ("POST_CALL_WEBHOOK_URL", "crm.example.com/hooks", "'https://crm.example.com/hooks/calls'"),
    ("TRANSCRIPTION_LANGUAGE", "german", "ISO 639-1 code such as 'de'"),
    ("AGENTS_FILE", "agents.yaml", "does not exist"),
    ("AGENTS_FILE", ".", "is a directory"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "'http://collector:4318'"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://collector", "'http://collector:4318/v1/traces'"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "'http/protobuf'"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "'none', 'gzip', 'deflate'"),
    ("OTEL_SERVICE_NAME", " ", "'twilio-realtime-relay'"),
    ("OTEL_RESOURCE_ATTRIBUTES", "production", "key=value pairs"),
    ("OTEL_TRACES_SAMPLER", "ratio", "'parentbased_traceidratio'"),
    ("OTEL_TRACES_SAMPLER_ARG", "10", "from 0 to 1"),
    ("OTEL_BSP_SCHEDULE_DELAY", "0", "from 1 to 600000"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "many", "whole number"),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096", "lower the batch size or raise the queue size"),
    ("OTEL_SDK_DISABLED", "yes please", "true or false"),
    ("OTEL_RECORD_TOOL_ARGUMENTS", "sometimes", "true or false"),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No `.env` and none of the relay's variables from the outer environment."""
    from relay.config import Settings

    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize(("variable", "value", "fix"), BAD_VALUES)
def test_a_bad_value_names_the_variable_the_value_and_the_fix(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, fix: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and fix in message, message
    assert len(caught.value.problems) == 1 and "Traceback" not in message


def test_every_setting_of_the_table_is_covered() -> None:
    """The table above goes through every setting that can be wrong (free text and secrets cannot)."""
    from relay.config import Settings

    free_text = {
        "instructions",
        "greeting",
        "voicemail_message",
        "recording_notice",
        "input_transcription_model",
    }
    free_text |= {"azure_openai_endpoint"}
    free_text |= {name for name in Settings.model_fields if name.startswith("azure_openai_")}
    secrets = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    covered = {variable.lower() for variable, _, _ in BAD_VALUES}
    missing = set(Settings.model_fields) - free_text - secrets - covered - {"allow_cross_provider_fallback"}
    missing -= {"realtime_early_greeting", "azure_api_version"}  # same kinds as covered ones
    assert not missing, f"no bad-value case for {sorted(missing)}"


@pytest.mark.parametrize(
    ("value", "level"),
    [("warning", "WARNING"), ("WARNING", "WARNING"), ("warn", "WARNING"), ("Debug", "DEBUG")],
)
def test_log_level_names_are_accepted_in_any_case(
    clean_env: pytest.MonkeyPatch, value: str, level: str
) -> None:
    clean_env.setenv("LOG_LEVEL", value)
    assert load_settings().log_level == level


def test_several_problems_are_listed_one_each(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LOG_LEVEL", "LOUD")
    clean_env.setenv("PORT", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert sorted(p.split("=")[0] for p in caught.value.problems) == ["LOG_LEVEL", "PORT"]


def test_a_secret_value_is_never_shown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TWILIO_AUTH_TOKEN", "tok-very-secret")
    clean_env.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError) as caught:
        load_settings(openai_api_key=["sk-very-secret"])  # a secret of the wrong type
    message = str(caught.value)
    assert "OPENAI_API_KEY=<hidden>" in message and "LOG_LEVEL='LOUD'" in message
    assert "sk-very-secret" not in message and "tok-very-secret" not in message


def test_otlp_headers_that_are_not_key_values_are_refused_unshown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Bearer s3cr3t-t0ken")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in message and "key=value" in message
    assert "s3cr3t" not in message


def test_a_post_call_webhook_needs_its_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POST_CALL_WEBHOOK_URL", "https://crm.example.com/hooks/calls")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "POST_CALL_WEBHOOK_SECRET" in str(caught.value) and len(caught.value.problems) == 1
    clean_env.setenv("POST_CALL_WEBHOOK_SECRET", "s3cret")
    assert load_settings().post_call_webhook_url == "https://crm.example.com/hooks/calls"


def test_a_password_in_a_bad_url_is_masked(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_BASE_URL", "ftp://proxy-user:proxy-pass@proxy.example.com/v1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "'ftp://proxy-user:***@proxy.example.com/v1'" in str(caught.value)
    assert "proxy-pass" not in str(caught.value)


def _relay_env(**variables: str) -> dict[str, str]:
    from relay.config import Settings

    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(variables)
    return env


async def _run_relay(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LOG_LEVEL", "LOUD"), ("LOG_FORMAT", "xml"), ("PORT", "http"), ("VAD_THRESHOLD", "7")],
)
async def test_relay_serve_prints_the_problem_and_exits_2_without_traceback(
    tmp_path: Path, variable: str, value: str
) -> None:
    code, err = await _run_relay(tmp_path, "serve", "--port", "1", env=_relay_env(**{variable: value}))
    assert code == 2, err
    assert err.startswith(f"relay: Invalid configuration: {variable}={value!r}"), err
    assert "Traceback" not in err and "relay doctor" in err


async def test_relay_serve_runs_with_log_level_warn(tmp_path: Path) -> None:
    """`warn` is WARNING: logging and uvicorn both take it; INFO lines are filtered out."""
    from relay.testing.server import bind_free_port

    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = _relay_env(LOG_LEVEL="warn")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port),
        env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any("TWILIO_AUTH_TOKEN is not set" in line for line in seen):
                line = await proc.stderr.readline()
                assert line, "relay serve exited: " + "".join(seen)
                seen.append(line.decode())
    finally:
        proc.terminate()
        rest = await asyncio.wait_for(proc.stderr.read(), timeout=20)
        await proc.wait()
    text = "".join(seen) + rest.decode()
    assert "WARNING" in text and " INFO " not in text and "Traceback" not in text


async def test_relay_doctor_reports_each_invalid_setting_with_its_fix(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("LOG_LEVEL", "LOUD")
    clean_env.setenv("MAX_CALL_DURATION", "0")
    code = await asyncio.to_thread(main, ["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  settings        LOG_LEVEL='LOUD' is not a log level: use one of DEBUG" in out
    assert "FAIL  settings        MAX_CALL_DURATION='0'" in out and "greater than 0" in out
