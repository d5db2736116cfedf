// The voice agent page: microphone -> 16 kHz PCM over the WebSocket; the answer's PCM ->
// gapless playback; a waveform, a level meter, states and the latency of every turn.
// `window.agent` holds the state, the events and the turns (read by the browser test).
"use strict";

const RATE = 16000;
const HISTORY = 220; // 20 ms columns in the waveform (4.4 s)

const agent = {
  state: "idle", // idle, connecting, listening, thinking, speaking, error
  events: [], // every JSON event received, with the time it arrived (ms, performance.now)
  turns: [],
  sentSamples: 0,
  receivedSamples: 0,
  playedSamples: 0,
  underruns: 0,
  error: null,
};
window.agent = agent;

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"), start: $("start"), endTurn: $("end-turn"), speaker: $("speaker"),
  emotion: $("emotion"), wave: $("wave"), level: $("level"), message: $("message"),
  turns: document.querySelector("#turns tbody"),
};
let ws = null;
let context = null;
let capture = null;
let playback = null;
let stream = null;
let turn = null; // the turn being answered
const you = new Float32Array(HISTORY);
const them = new Float32Array(HISTORY);
let youLevel = 0;
let themLevel = 0; // the answer's level, sampled into the waveform with the microphone's

function setState(state, message) {
  agent.state = state;
  ui.state.className = `state ${state}`;
  ui.state.textContent = state;
  if (message !== undefined) {
    ui.message.textContent = message;
    ui.message.className = state === "error" ? "message error" : "message";
  }
}

function fail(message) {
  agent.error = message;
  setState("error", message);
  ui.start.disabled = false;
  ui.start.textContent = "Reconnect";
  ui.endTurn.disabled = true;
}

function push(history, value) {
  history.copyWithin(0, 1);
  history[HISTORY - 1] = value;
}

function draw() {
  const g = ui.wave.getContext("2d");
  const { width, height } = ui.wave;
  g.clearRect(0, 0, width, height);
  const column = width / HISTORY;
  const mid = height / 2;
  const style = getComputedStyle(document.documentElement);
  for (const [history, color] of [[you, style.getPropertyValue("--you")],
                                  [them, style.getPropertyValue("--agent")]]) {
    g.fillStyle = color;
    for (let i = 0; i < HISTORY; i++) {
      const h = Math.min(mid, Math.sqrt(history[i]) * mid * 1.6);
      if (h > 0.5) g.fillRect(i * column, mid - h, Math.max(1, column - 1), 2 * h);
    }
  }
  g.fillStyle = "#2b3642";
  g.fillRect(0, mid, width, 1);
  ui.level.style.width = `${Math.min(100, Math.sqrt(youLevel) * 160)}%`;
  requestAnimationFrame(draw);
}

function socketUrl() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`;
}

function fillSelect(select, names, selected) {
  select.innerHTML = "";
  names.forEach((name, i) => select.add(new Option(name.replace(/_/g, " "), name, false, i === selected)));
  select.disabled = false;
}

function sendConfig() {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "config", speaker: ui.speaker.value, emotion: ui.emotion.value }));
  }
}

function addTurnRow(t) {
  const row = ui.turns.insertRow(0);
  t.row = row;
  for (let i = 0; i < 7; i++) row.insertCell();
  updateTurnRow(t);
}

function ms(value) {
  return value === null || value === undefined ? "…" : `${Math.round(value)} ms`;
}

function updateTurnRow(t) {
  const cells = t.row.cells;
  cells[0].textContent = t.number;
  cells[1].textContent = `${t.question.toFixed(2)} s`;
  cells[2].textContent = ms(t.serverLatency);
  cells[3].textContent = ms(t.firstAudio);
  cells[4].textContent = ms(t.firstSound);
  cells[5].textContent = t.answerSeconds === null ? "…" :
    `${t.answerSeconds.toFixed(2)} s${t.interrupted ? " (interrupted)" : ""}`;
  cells[6].textContent = t.underruns === null ? "…" : t.underruns;
}

function onEvent(event) {
  const now = performance.now();
  agent.events.push({ ...event, at: now });
  switch (event.type) {
    case "ready":
      fillSelect(ui.speaker, event.speakers, event.speaker);
      fillSelect(ui.emotion, event.emotions, event.emotion);
      ui.endTurn.disabled = false;
      setState("listening", "Listening: speak Telugu, then pause.");
      break;
    case "speech_start":
      if (agent.state === "speaking" || agent.state === "thinking") {
        playback.port.postMessage({ type: "clear" }); // barge-in: stop playing at once
      }
      setState("listening", "Hearing you…");
      break;
    case "speech_end":
      turn = {
        number: agent.turns.length + 1, question: event.seconds, endedAt: now,
        serverLatency: null, firstAudio: null, firstSound: null, answerSeconds: null,
        underruns: null, interrupted: false,
      };
      agent.turns.push(turn);
      addTurnRow(turn);
      setState("thinking", "Thinking…");
      break;
    case "response_start":
      if (turn) {
        turn.serverLatency = event.latency_ms;
        turn.budget = event.budget;
        updateTurnRow(turn);
      }
      setState("speaking", "Answering (speak to interrupt).");
      break;
    case "response_end":
      if (turn) {
        turn.answerSeconds = event.seconds;
        turn.interrupted = event.interrupted;
        if (event.interrupted) turn.underruns = 0;
        updateTurnRow(turn);
      }
      playback.port.postMessage({ type: "end" });
      if (event.interrupted || event.seconds === 0) setState("listening", "Listening.");
      break;
    case "error":
      ui.message.textContent = event.message;
      ui.message.className = "message error";
      if (agent.state === "thinking") setState("listening");
      break;
    default:
      break;
  }
}

function onAudio(buffer) {
  const samples = buffer.byteLength / 2;
  agent.receivedSamples += samples;
  if (turn && turn.firstAudio === null) {
    turn.firstAudio = performance.now() - turn.endedAt;
    updateTurnRow(turn);
  }
  playback.port.postMessage({ type: "audio", pcm: buffer }, [buffer]);
}

function onPlayback(message) {
  if (message.type === "stats") {
    themLevel = message.level * message.level;
    return;
  }
  if (message.type === "started" && turn && turn.firstSound === null) {
    turn.firstSound = performance.now() - turn.endedAt;
    updateTurnRow(turn);
  } else if (message.type === "drained") {
    agent.playedSamples += message.played;
    agent.underruns += message.underruns;
    if (turn) {
      turn.underruns = message.underruns;
      turn.playedSamples = message.played;
      updateTurnRow(turn);
    }
    if (agent.state === "speaking") setState("listening", "Listening.");
  }
}

async function startAudio() {
  context = new AudioContext({ latencyHint: "interactive" });
  await context.audioWorklet.addModule("static/capture-worklet.js");
  await context.audioWorklet.addModule("static/playback-worklet.js");
  stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const source = context.createMediaStreamSource(stream);
  capture = new AudioWorkletNode(context, "capture", {
    numberOfOutputs: 0, processorOptions: { targetRate: RATE, chunk: 320 },
  });
  source.connect(capture);
  capture.port.onmessage = (e) => {
    youLevel = e.data.rms * e.data.rms;
    push(you, youLevel);
    push(them, agent.state === "speaking" ? themLevel : 0);
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(e.data.pcm);
      agent.sentSamples += 320;
    }
  };
  playback = new AudioWorkletNode(context, "playback", {
    outputChannelCount: [1], processorOptions: { sourceRate: RATE, prebufferSeconds: 0.04 },
  });
  playback.connect(context.destination);
  playback.port.onmessage = (e) => onPlayback(e.data);
  await context.resume();
}

function connect() {
  setState("connecting", "Connecting…");
  ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onEvent(JSON.parse(e.data));
    else onAudio(e.data);
  };
  ws.onclose = (e) => fail(`Disconnected${e.reason ? `: ${e.reason}` : ""} (code ${e.code}).`);
  ws.onerror = () => fail("Cannot reach the agent's WebSocket.");
}

ui.start.onclick = async () => {
  ui.start.disabled = true;
  try {
    if (!context) await startAudio();
    connect();
  } catch (error) {
    fail(`Microphone or audio unavailable: ${error.message || error}`);
  }
};
ui.endTurn.onclick = () => {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end_of_turn" }));
};
ui.speaker.onchange = sendConfig;
ui.emotion.onchange = sendConfig;
requestAnimationFrame(draw);
