"""What a request to the fake OpenAI HTTP service is, and whether the service would take it.

`read_request` records a request (`RecordedRequest`: its JSON body, or its multipart form and
uploaded file); `check_request` refuses it as OpenAI or Azure would, in the order they check:
route (Azure's `api-version`), auth, model or deployment, then the body of each endpoint
(transcriptions, chat, speech), each refusal in the provider's JSON error shape (`Reject`).
`relay.testing.openai_http.FakeOpenAIHTTP` serves them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from relay.testing.openai_replies import Kind, Provider, RecordedRequest, parse_wav
from relay.testing.openai_wire import azure_error, invalid_request, masked_key, openai_error

if TYPE_CHECKING:
    from relay.testing.openai_http import FakeOpenAIHTTP

__all__ = ["check_request", "read_request"]

_AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"}
    | {"marin", "cedar"}
)
_SPEECH_FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
_SPEECH_FORMATS_SERVED = ("pcm", "wav")  # the fake cannot encode compressed audio
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


async def read_request(request: Request, kind: Kind, provider: Provider) -> RecordedRequest:
    """The request as recorded once its body has been read (`time` is then)."""
    record = RecordedRequest(
        kind=kind,
        provider=provider,
        method=request.method,
        path=request.url.path,
        query=dict(request.query_params),
        headers={k.lower(): v for k, v in request.headers.items()},
        time=0.0,
        deployment=request.path_params.get("deployment"),
    )
    if kind == "transcriptions":
        await _read_multipart(request, record)
    else:
        await _read_json(request, record)
    record.time = time.monotonic()
    return record


async def _read_json(request: Request, record: RecordedRequest) -> None:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        record.body = body
    else:
        record.parse_error = (
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
            "not valid JSON.)"
        )


async def _read_multipart(request: Request, record: RecordedRequest) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        record.parse_error = "Could not parse multipart form"
        await request.body()
        return
    try:
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name == "file":
                        record.file_name = value.filename
                        record.file_content_type = value.content_type
                        record.file_bytes = await value.read()
                    continue
                record.form_items.append((name, value))
                record.form[name] = value
    except (HTTPException, MultiPartException) as exc:
        record.parse_error = f"Could not parse multipart form ({exc})"
        return
    if record.file_bytes is not None:
        record.wav = parse_wav(record.file_bytes)


def check_request(fake: FakeOpenAIHTTP, record: RecordedRequest) -> None:
    """Raises `Reject` as the service would, in the order it checks: route, auth, model, body
    (`fake`'s keys, models, deployments and API versions). The failure knobs come after this."""
    if record.provider == "azure":
        version = record.query.get("api-version")
        if version not in fake.api_versions:
            raise azure_error(404, "404", "Resource not found")
        _check_azure_auth(fake, record)
    else:
        _check_openai_auth(fake, record)
    if record.parse_error is not None:
        raise invalid_request(record.parse_error)
    model = record.model
    if record.provider == "azure":
        if record.deployment not in fake.deployments:
            raise azure_error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment "
                "within the last 5 minutes, please wait a moment and try again.",
            )
    elif not model:
        raise invalid_request("you must provide a model parameter", param="model")
    elif model not in fake.models:
        raise openai_error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    model_name = model or record.deployment or ""
    if record.kind == "transcriptions":
        _check_transcription(record, model_name)
    elif record.kind == "chat":
        _check_chat(record)
    else:
        _check_speech(record)


def _check_openai_auth(fake: FakeOpenAIHTTP, record: RecordedRequest) -> None:
    auth = record.headers.get("authorization", "")
    if not auth.lower().startswith("bearer ") or not auth[7:].strip():
        raise openai_error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    key = auth[7:].strip()
    if key != fake.api_key:
        raise openai_error(
            401,
            f"Incorrect API key provided: {masked_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _check_azure_auth(fake: FakeOpenAIHTTP, record: RecordedRequest) -> None:
    api_key = record.headers.get("api-key")
    auth = record.headers.get("authorization", "")
    if api_key is not None:
        if api_key == fake.azure_api_key:
            return
    elif auth.lower().startswith("bearer "):
        if auth[7:].strip() in fake.bearer_tokens:
            return
        raise azure_error(
            401,
            "401",
            "Unauthorized. Access token is missing, invalid_request, audience is incorrect "
            "(https://cognitiveservices.azure.com), or have expired.",
        )
    raise azure_error(
        401,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
        "valid key for an active subscription and use a correct regional API endpoint for your resource.",
    )


def _check_transcription(record: RecordedRequest, model: str) -> None:
    if record.file_bytes is None:
        raise invalid_request("Missing required parameter: 'file'.", param="file")
    name = record.file_name or ""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension not in _AUDIO_EXTENSIONS:
        raise invalid_request(
            f"Invalid file format. Supported formats: {list(_AUDIO_EXTENSIONS)}",
            param="file",
            code="invalid_value",
        )
    if extension == "wav" and record.wav is None:
        raise invalid_request(
            "Audio file might be corrupted or unsupported", param="file", code="invalid_value"
        )
    response_format = record.form.get("response_format", "json")
    whisper = model.startswith("whisper")
    allowed = ("json", "text", "srt", "verbose_json", "vtt") if whisper else ("json", "text")
    if response_format not in allowed:
        raise invalid_request(
            f"response_format '{response_format}' is not compatible with model '{model}'. "
            f"Use one of {list(allowed)}.",
            param="response_format",
            code="unsupported_value",
        )
    if record.stream and whisper:
        raise invalid_request(
            "Streaming is not supported for whisper-1.", param="stream", code="unsupported_value"
        )


def _check_chat(record: RecordedRequest) -> None:
    body = record.body or {}
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("Missing required parameter: 'messages'.", param="messages")
    pending: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made it
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise invalid_request(
                f"Invalid value: '{role}'. Supported values are: {sorted(_ROLES)}.", f"messages[{i}].role"
            )
        role = message["role"]
        if pending and role != "tool":
            raise invalid_request(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(pending),
                f"messages.[{i}].role",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                raise invalid_request(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del pending[call_id]
        elif role == "assistant":
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    pending[call["id"]] = i
    if pending:
        raise invalid_request(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: "
            + ", ".join(pending),
            "messages",
        )
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid_request("Invalid type for 'tools': expected an array.", "tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise invalid_request(f"Missing required parameter: 'tools[{i}].type'.", f"tools[{i}].type")
            function = tool.get("function")
            if not isinstance(function, dict):
                raise invalid_request(
                    f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}].function"
                )
            if not isinstance(function.get("name"), str):
                raise invalid_request(
                    f"Missing required parameter: 'tools[{i}].function.name'.",
                    f"tools[{i}].function.name",
                )


def _check_speech(record: RecordedRequest) -> None:
    body = record.body or {}
    text = body.get("input")
    if not isinstance(text, str):
        raise invalid_request("Missing required parameter: 'input'.", param="input")
    if not text:
        raise invalid_request(
            "Invalid 'input': string too short. Expected a string with minimum length 1.", "input"
        )
    if len(text) > 4096:
        raise invalid_request(
            f"Invalid 'input': string too long. Expected a string with maximum length 4096, but got a "
            f"string with length {len(text)} instead.",
            "input",
            "string_above_max_length",
        )
    voice = body.get("voice")
    if not (voice in _VOICES or (isinstance(voice, dict) and isinstance(voice.get("id"), str))):
        raise invalid_request(f"Invalid value for 'voice': {voice!r}.", "voice", "invalid_value")
    response_format = body.get("response_format", "mp3")
    if response_format not in _SPEECH_FORMATS:
        raise invalid_request(f"Invalid value: '{response_format}'.", "response_format", "invalid_value")
    if response_format not in _SPEECH_FORMATS_SERVED:
        raise invalid_request(
            f"The fake serves response_format {list(_SPEECH_FORMATS_SERVED)} only, not '{response_format}'.",
            "response_format",
        )
    if body.get("stream_format", "audio") != "audio":
        raise invalid_request("The fake serves stream_format 'audio' only.", "stream_format")
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        raise invalid_request("Invalid 'speed': expected a number from 0.25 to 4.0.", "speed")
