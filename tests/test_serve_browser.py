"""The voice agent's page in a real browser: Debian's headless Chromium driven by Playwright, its
microphone a WAV file of real Telugu speech (Chromium's fake capture device).

`TELUGU_JAX_SCREENSHOT=docs/voice_agent.png python -m pytest tests/test_serve_browser.py` also
saves a screenshot of the page after the turn (the README's picture).
"""

import os
import shutil

import numpy as np
import pytest
import soundfile

from test_serve import CLIPS, TOKEN, answer_samples, running_server, speech

CHROMIUM = ("chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell", "chromium",
            "/usr/lib/chromium/chromium")


def chromium() -> str:
  for name in CHROMIUM:
    path = shutil.which(name) or (name if os.path.isfile(name) else None)
    if path:
      return path
  pytest.skip("no Chromium installed (apt-get install chromium-headless-shell)")


def test_page_hears_the_microphone_and_plays_the_answer(tmp_path):
  sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
  executable = chromium()
  if not os.path.isdir(CLIPS):
    pytest.skip(f"{CLIPS}: no real speech clips here")
  # The fake microphone loops this file: speech, then silence long enough for the whole answer.
  clip = tmp_path / "clip.wav"
  soundfile.write(clip, np.concatenate([speech("common_voice_te_42973996.mp3", 0.4),
                                        np.zeros(5 * 16000)]), 16000, subtype="PCM_16")
  with running_server(str(tmp_path / "agent"), "--warmup_seconds=1", "--lead_seconds=0.5",
                      "--silence_ms=500") as (url, _):
    with sync_api.sync_playwright() as p:
      browser = p.chromium.launch(executable_path=executable, args=[
          "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
          f"--use-file-for-fake-audio-capture={clip}",
          "--autoplay-policy=no-user-gesture-required"])
      page = browser.new_page(viewport={"width": 960, "height": 640})
      errors = []
      page.on("pageerror", lambda e: errors.append(str(e)))
      page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
      page.goto(f"{url}/?token={TOKEN}")
      assert page.title() == "Telugu voice agent"
      assert page.inner_text("#state") == "press start"
      page.click("#start")
      page.wait_for_function("() => window.agent.state === 'listening'", timeout=30_000)
      # The turn: heard, answered, played to the end.
      page.wait_for_function(
          "() => window.agent.turns.length > 0 && window.agent.turns[0].underruns !== null",
          timeout=120_000)
      agent = page.evaluate("""() => ({
          state: agent.state, sent: agent.sentSamples, received: agent.receivedSamples,
          played: agent.playedSamples, events: agent.events.map(e => e.type),
          turn: (({row, ...t}) => t)(agent.turns[0])})""")
      row = page.inner_text("#turns tbody tr")
      if os.environ.get("TELUGU_JAX_SCREENSHOT"):
        page.screenshot(path=os.environ["TELUGU_JAX_SCREENSHOT"])
      browser.close()
  assert not errors, errors
  assert agent["events"][:5] == ["ready", "speech_start", "speech_end", "response_start",
                                 "response_end"], agent["events"]
  turn = agent["turn"]
  samples = answer_samples()
  assert turn["answerSeconds"] == round(samples / 16000, 4) and not turn["interrupted"]
  assert agent["received"] >= samples and turn["playedSamples"] >= samples - 2
  assert 0 < turn["serverLatency"] and 0 < turn["firstAudio"] <= turn["firstSound"]
  assert 0.4 < turn["question"] <= 1.0 and agent["sent"] > 16000
  assert str(turn["number"]) in row and "ms" in row
