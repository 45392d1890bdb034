// Streaming sample-rate conversion for the microphone: the browser captures at the device's
// rate (usually 48 kHz) and a session takes PCM at its own input rate (16 kHz by default).
// A windowed-sinc interpolator whose cutoff follows the lower rate, so downsampling does not
// fold the band above the new Nyquist frequency back into speech.

/** Taps on each side of an output sample, counted at the lower of the two rates. */
const ZERO_CROSSINGS = 8;

export class Resampler {
  private readonly step: number; // input samples per output sample
  private readonly cutoff: number; // of the input's Nyquist, in (0, 1]
  private readonly half: number; // kernel half width, in input samples
  private buffer: Float32Array;
  private position: number; // next output's position in buffer coordinates

  constructor(
    readonly inputRate: number,
    readonly outputRate: number,
  ) {
    this.step = inputRate / outputRate;
    this.cutoff = Math.min(1, outputRate / inputRate) * 0.92;
    this.half = Math.ceil(ZERO_CROSSINGS / this.cutoff);
    // History of zeros, so the first output sample is computed like every other.
    this.buffer = new Float32Array(this.half);
    this.position = this.half;
  }

  /** Resampled samples for this input (those whose kernel already has all its input). */
  push(input: Float32Array): Float32Array {
    if (this.inputRate === this.outputRate) return input.slice();
    const joined = new Float32Array(this.buffer.length + input.length);
    joined.set(this.buffer);
    joined.set(input, this.buffer.length);
    const out: number[] = [];
    const { half, cutoff, step } = this;
    while (this.position + half < joined.length) {
      const center = this.position;
      const first = Math.floor(center) - half + 1;
      let sum = 0;
      let weight = 0;
      for (let k = first; k < first + 2 * half; k++) {
        const distance = center - k;
        const x = distance * cutoff;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const window = 0.5 * (1 + Math.cos((Math.PI * distance) / half)); // Hann
        const h = sinc * window;
        sum += joined[k] * h;
        weight += h;
      }
      // Normalising by the kernel's sum keeps the DC gain exactly 1 at every fractional phase.
      out.push(weight ? sum / weight : 0);
      this.position += step;
    }
    // Keep what the next kernels still reach.
    const keepFrom = Math.max(0, Math.floor(this.position) - half);
    this.buffer = joined.slice(keepFrom);
    this.position -= keepFrom;
    return Float32Array.from(out);
  }
}

/** PCM_S16LE bytes of float samples in [-1, 1]. */
export function pcm16(samples: Float32Array): Uint8Array {
  const bytes = new Uint8Array(samples.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return bytes;
}
