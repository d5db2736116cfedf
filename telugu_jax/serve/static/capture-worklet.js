// Microphone capture: the context's rate -> 16 kHz mono int16, posted in 20 ms chunks.
//
// Downsampling low-passes with a 31-tap windowed-sinc FIR (cut-off at 90% of the target
// Nyquist frequency) and then interpolates linearly between the filtered samples.

function lowpass(cutoff, taps) {
  // cutoff in cycles per input sample (< 0.5); a Hamming-windowed sinc, unit DC gain.
  const h = new Float32Array(taps);
  const m = (taps - 1) / 2;
  let sum = 0;
  for (let k = 0; k < taps; k++) {
    const x = k - m;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    h[k] = sinc * (0.54 - 0.46 * Math.cos((2 * Math.PI * k) / (taps - 1)));
    sum += h[k];
  }
  for (let k = 0; k < taps; k++) h[k] /= sum;
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.targetRate = o.targetRate || 16000;
    this.chunk = o.chunk || 320;
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.fir = this.step > 1 ? lowpass((0.45 * this.targetRate) / sampleRate, 31) : new Float32Array([1]);
    this.history = new Float32Array(this.fir.length); // the last inputs, a ring
    this.at = 0; // ring position of the newest input
    this.index = -1; // index of the newest filtered sample
    this.previous = 0; // the filtered sample before it
    this.next = 0; // input-stream time of the next output sample
    this.out = new Int16Array(this.chunk);
    this.filled = 0;
    this.sumSquares = 0;
  }

  filter(x) {
    const n = this.fir.length;
    this.at = (this.at + 1) % n;
    this.history[this.at] = x;
    let y = 0;
    for (let k = 0; k < n; k++) y += this.fir[k] * this.history[(this.at - k + n) % n];
    return y;
  }

  emit(y) {
    const v = Math.max(-1, Math.min(1, y));
    this.out[this.filled++] = Math.round(v * 32767);
    this.sumSquares += v * v;
    if (this.filled === this.chunk) {
      const rms = Math.sqrt(this.sumSquares / this.chunk);
      this.port.postMessage({ pcm: this.out.buffer, rms }, [this.out.buffer]);
      this.out = new Int16Array(this.chunk);
      this.filled = 0;
      this.sumSquares = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const input = channels[0];
    for (let i = 0; i < input.length; i++) {
      let x = input[i];
      for (let c = 1; c < channels.length; c++) x += channels[c][i];
      const y = this.filter(x / channels.length);
      this.index += 1;
      // Output samples whose time lies in (index - 1, index]: interpolate.
      while (this.next <= this.index) {
        const frac = this.next - (this.index - 1);
        this.emit(this.previous + (y - this.previous) * frac);
        this.next += this.step;
      }
      this.previous = y;
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
