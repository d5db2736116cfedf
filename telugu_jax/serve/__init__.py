"""The real-time voice agent: `python -m telugu_jax.serve --codec=DIR --s2s=DIR`.

- `engine`: the shared models on one worker thread; an answer streams S2S frames through the
  codec's stream decoder.
- `vad`: Silero VAD (vendored ONNX model) and end-of-turn detection with hysteresis.
- `server`: the aiohttp application, the page at `/` and the WebSocket protocol at `/ws`.
- `__main__`: the command line.
- `static/`: the browser page (no build step, nothing from a CDN).
"""
