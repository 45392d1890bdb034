// Measures the playground's microphone resampler (clients/web/src/live/resample.ts, bundled to
// ESM by the test): gain of an in-band tone, rejection of a tone above the new Nyquist
// frequency, output length, and that block-by-block streaming equals one call.
// Usage: node resample-check.mjs BUNDLE.mjs   (prints one JSON line)
const { Resampler } = await import(process.argv[2]);

function tone(freq, rate, seconds) {
  const out = new Float32Array(Math.round(rate * seconds));
  for (let i = 0; i < out.length; i++) out[i] = 0.5 * Math.sin((2 * Math.PI * freq * i) / rate);
  return out;
}

/** Amplitude of `freq` in `x` (a single-bin DFT over the middle, away from the edges). */
function amplitude(x, freq, rate) {
  const start = Math.floor(x.length / 4);
  const end = Math.floor((3 * x.length) / 4);
  let re = 0;
  let im = 0;
  for (let i = start; i < end; i++) {
    re += x[i] * Math.cos((2 * Math.PI * freq * i) / rate);
    im += x[i] * Math.sin((2 * Math.PI * freq * i) / rate);
  }
  return (2 * Math.hypot(re, im)) / (end - start);
}

function streamed(resampler, input, block) {
  const parts = [];
  for (let i = 0; i < input.length; i += block) parts.push(resampler.push(input.subarray(i, i + block)));
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Float32Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

const results = [];
for (const [from, to] of [[48000, 16000], [44100, 16000], [16000, 16000], [8000, 16000], [22050, 16000]]) {
  const input = tone(1000, from, 1.0);
  const whole = new Resampler(from, to).push(input);
  const blocks = streamed(new Resampler(from, to), input, 333);
  let maxDiff = 0;
  for (let i = 0; i < Math.min(whole.length, blocks.length); i++) maxDiff = Math.max(maxDiff, Math.abs(whole[i] - blocks[i]));
  // A tone above the new Nyquist frequency, and where it would fold to without the filter.
  const above = 0.95 * (from / 2);
  let folded = above % to;
  if (folded > to / 2) folded = to - folded;
  const high = from > to ? amplitude(new Resampler(from, to).push(tone(above, from, 1.0)), folded, to) : 0;
  results.push({
    from,
    to,
    gain: amplitude(whole, 1000, to) / 0.5,
    expectedLength: Math.round(input.length * to / from),
    length: whole.length,
    streamedLength: blocks.length,
    maxDiff,
    aliased: high / 0.5,
  });
}
console.log(JSON.stringify(results));
