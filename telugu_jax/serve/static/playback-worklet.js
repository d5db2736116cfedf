// Gapless playback of the streamed answer: 16 kHz int16 chunks -> a queue -> the context's rate.
//
// Messages in: {type: "audio", pcm: ArrayBuffer}, {type: "end"} (the answer is complete: play
// what is queued, then report "drained"), {type: "clear"} (barge-in: drop everything).
// Messages out: {type: "started"} (first sound of an answer), {type: "drained", played,
// underruns}, and {type: "stats", played, queued, underruns, level} about every 50 ms.
// An underrun is a moment, inside an answer, when the queue ran dry before its end.

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.step = (o.sourceRate || 16000) / sampleRate; // source samples per output sample
    this.prebuffer = Math.round((o.prebufferSeconds || 0.05) * (o.sourceRate || 16000));
    this.chunks = [];
    this.offset = 0; // read position (fractional) in chunks[0]
    this.queued = 0; // source samples queued
    this.previous = 0;
    this.reset();
    this.sinceStats = 0;
    this.port.onmessage = (e) => this.receive(e.data);
  }

  reset() {
    this.chunks = [];
    this.offset = 0;
    this.queued = 0;
    this.playing = false; // an answer's sound has started
    this.ended = false; // the server has finished sending it
    this.starved = false;
    this.played = 0;
    this.underruns = 0;
  }

  receive(message) {
    if (message.type === "audio") {
      const pcm = new Int16Array(message.pcm);
      const samples = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
      if (!this.playing && this.chunks.length === 0 && this.ended) this.reset();
      this.chunks.push(samples);
      this.queued += samples.length;
    } else if (message.type === "end") {
      this.ended = true;
    } else if (message.type === "clear") {
      this.reset();
    }
  }

  read() {
    // One source sample at the current position, linearly interpolated, or null when dry.
    while (this.chunks.length && this.offset >= this.chunks[0].length) {
      this.offset -= this.chunks[0].length;
      this.chunks.shift();
    }
    if (!this.chunks.length) return null;
    const chunk = this.chunks[0];
    const i = Math.floor(this.offset);
    const frac = this.offset - i;
    const a = chunk[i];
    const b = i + 1 < chunk.length ? chunk[i + 1] : this.chunks.length > 1 ? this.chunks[1][0] : a;
    return a + (b - a) * frac;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let sumSquares = 0;
    const waiting = !this.playing && this.queued < this.prebuffer && !this.ended;
    for (let i = 0; i < out.length; i++) {
      const value = waiting ? null : this.read();
      if (value === null) {
        out[i] = 0;
        if (this.playing && !this.ended && !this.starved) {
          this.starved = true;
          this.underruns += 1;
        }
        continue;
      }
      if (!this.playing) {
        this.playing = true;
        this.port.postMessage({ type: "started" });
      }
      this.starved = false;
      out[i] = value;
      sumSquares += value * value;
      const before = Math.floor(this.offset);
      this.offset += this.step;
      const consumed = Math.floor(this.offset) - before;
      this.played += consumed;
      this.queued -= consumed;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (this.playing && this.ended && this.read() === null) {
      this.port.postMessage({ type: "drained", played: this.played, underruns: this.underruns });
      const underruns = this.underruns;
      this.reset();
      this.ended = true;
      this.totalUnderruns = (this.totalUnderruns || 0) + underruns;
    }
    this.sinceStats += out.length;
    if (this.sinceStats >= sampleRate / 20) {
      this.sinceStats = 0;
      this.port.postMessage({
        type: "stats", played: this.played, queued: Math.max(0, this.queued),
        underruns: this.underruns, level: Math.sqrt(sumSquares / out.length),
      });
    }
    return true;
  }
}

registerProcessor("playback", PlaybackProcessor);
