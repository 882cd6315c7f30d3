"""Relay-added time per cascade turn, with the OpenAI fake answering at zero latency.

Four hops, each measured from the relay's own turn timings (time.monotonic, same process) to the
moment the next party received the request or audio:

  1. end of the VAD's silence window → STT request received by the fake
  2. STT answer received by the relay → chat request received by the fake
  3. first sentence complete → TTS request received by the fake
  4. first TTS bytes received by the relay → first μ-law frame received by the caller

Goal: each hop ≤ 20 ms median. Usage: python bench/cascade_latency.py [--turns 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.app import create_app  # noqa: E402
from relay.config import load_settings  # noqa: E402
from relay.testing.audio import silence_ulaw, speech_ulaw  # noqa: E402
from relay.testing.openai_http import FakeOpenAIHTTP  # noqa: E402
from relay.testing.openai_replies import Text  # noqa: E402
from relay.testing.server import serve_app  # noqa: E402
from relay.testing.twilio import FakeTwilioCall  # noqa: E402

TOKEN = "bench-token"
ANSWER = "Sure. The answer is forty two. Is there anything else I can help you with today?"


async def run(turns: int) -> dict[str, list[float]]:
    http = FakeOpenAIHTTP(
        transcripts=["what is the answer"] * turns,
        replies=[Text(ANSWER, chunk_chars=6)] * turns,
    )
    hops: dict[str, list[float]] = {"vad_end → STT request": [], "STT answer → chat request": []}
    hops |= {"first sentence → TTS request": [], "first TTS bytes → first frame": []}
    speech = speech_ulaw("What is the answer?")
    async with http.serve() as http_url:
        settings = load_settings(
            _env_file=None,
            relay_mode="cascade",
            openai_base_url=http_url + "/v1",
            openai_api_key="sk-test",
            twilio_auth_token=TOKEN,
            public_url="https://relay.example.com",
            greeting_enabled=False,
            log_level="WARNING",
        )
        app = create_app(settings)
        async with (
            serve_app(app) as url,
            FakeTwilioCall(base_url=url, auth_token=TOKEN, public_url="https://relay.example.com") as call,
        ):
            assert await call.connect(await call.fetch_twiml())
            for _ in range(turns):
                before, heard = len(http.speech_requests), len(call.received_audio)
                await call.send_audio(silence_ulaw(300) + speech + silence_ulaw(900))
                await http.wait_for("speech", n=before + 1, timeout=15)
                await call.wait_for_media(min_bytes=heard + 160, timeout=15)
                await call.wait_playback_idle(timeout=30)
            await call.stop()
            await app.state.manager.wait_idle(timeout=5)
            record = await app.state.store.get(call.call_sid)
    assert record is not None
    timings = record["stats"][-1]["turn_timings"]
    first_speech = [r for r in http.speech_requests if r.input and ANSWER.startswith(r.input)]
    media_times = [m.at for m in call.messages if m.event == "media"]
    for i, t in enumerate(timings[:turns]):
        hops["vad_end → STT request"].append(http.transcription_requests[i].time - t["vad_end"])
        hops["STT answer → chat request"].append(http.chat_requests[i].time - t["stt_done"])
        hops["first sentence → TTS request"].append(first_speech[i].time - t["first_sentence"])
        first_frame = min(at for at in media_times if at >= t["tts_first_bytes"])
        hops["first TTS bytes → first frame"].append(first_frame - t["tts_first_bytes"])
    return hops


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    hops = asyncio.run(run(args.turns))
    print(f"cascade relay-added latency, {args.turns} turns, fakes at zero latency (ms)")
    print(f"{'hop':<34} {'median':>8} {'p90':>8} {'max':>8}  goal ≤ 20 ms median")
    for name, values in hops.items():
        ms = sorted(v * 1000 for v in values)
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        verdict = "ok" if statistics.median(ms) <= 20 else "OVER"
        print(f"{name:<34} {statistics.median(ms):8.1f} {p90:8.1f} {ms[-1]:8.1f}  {verdict}")


if __name__ == "__main__":
    main()
