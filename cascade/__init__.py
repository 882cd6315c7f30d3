"""Building blocks of the cascaded path: Twilio μ-law → VAD → STT → chat with tools → TTS → μ-law.

Each module is small and independent; import from the module you need (nothing is re-exported
here, so importing :mod:`cascade.vad` does not load the openai SDK):

* :mod:`cascade.vad` — ``TurnDetector``: μ-law frames in, ``SpeechStarted`` / ``Utterance`` out.
* :mod:`cascade.stt` — ``wav_bytes``, ``transcribe``: an utterance's PCM16 to its transcript.
* :mod:`cascade.llm` — ``stream_chat`` (``TextDelta`` … ``ToolCallsDone``) and history helpers.
* :mod:`cascade.sentences` — ``SentenceChunker``: streamed text to sentences for TTS.
* :mod:`cascade.tts` — ``synthesize`` (PCM16 24 kHz chunks) and ``PcmToTwilio`` (160-byte μ-law frames).

The session that wires them (and owns retries, barge-in and the call record) lives elsewhere.
"""
