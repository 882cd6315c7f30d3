"""Twilio ⇄ speech-AI relay: realtime speech-to-speech with a cascaded fallback."""

__version__ = "0.1.0"
