// Media in the browser: raw bytes from files and the microphone in, images and speech out.
// Images and audio travel as raw bytes with their format (never base64), as the contract says.
import { AudioFormat, ImageFormat, type Audio, type Image } from "./gen/mmserve/common/v1/media_pb";

const IMAGE_TYPES: Record<number, string> = {
  [ImageFormat.PNG]: "image/png",
  [ImageFormat.JPEG]: "image/jpeg",
  [ImageFormat.WEBP]: "image/webp",
};

export async function fileBytes(file: File): Promise<Uint8Array> {
  return new Uint8Array(await file.arrayBuffer());
}

/** An <img> of an image message (the server always sets its format on output). */
export function imageElement(image: Image, alt: string): HTMLImageElement {
  const element = document.createElement("img");
  const type = IMAGE_TYPES[image.format] ?? "image/png";
  if (image.source.case === "data") {
    element.src = URL.createObjectURL(new Blob([image.source.value as BlobPart], { type }));
  }
  element.alt = alt;
  if (image.width) element.width = image.width;
  if (image.height) element.height = image.height;
  return element;
}

/** 16-bit PCM mono WAV of float samples in [-1, 1]. */
export function wavBytes(samples: Float32Array, rate: number): Uint8Array {
  const data = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset: number, value: string) =>
    [...value].forEach((c, i) => data.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  data.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  data.setUint32(16, 16, true);
  data.setUint16(20, 1, true); // PCM
  data.setUint16(22, 1, true); // mono
  data.setUint32(24, rate, true);
  data.setUint32(28, rate * 2, true);
  data.setUint16(32, 2, true);
  data.setUint16(34, 16, true);
  text(36, "data");
  data.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => data.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Uint8Array(data.buffer);
}

/** Float samples of a PCM S16LE chunk. */
export function pcmSamples(audio: Audio): Float32Array {
  const bytes = audio.source.case === "data" ? audio.source.value : new Uint8Array();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const samples = new Float32Array(Math.floor(bytes.byteLength / 2));
  for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 0x8000;
  return samples;
}

/** Plays streamed speech chunks back to back, and keeps them for a replayable WAV. */
export class SpeechPlayer {
  private context: AudioContext | null = null;
  private next = 0;
  private chunks: Float32Array[] = [];
  rate = 0;

  push(audio: Audio): void {
    const samples = pcmSamples(audio);
    this.rate = audio.sampleRateHz || this.rate;
    this.chunks.push(samples);
    if (!samples.length || !this.rate) return;
    this.context ??= new AudioContext();
    const buffer = this.context.createBuffer(1, samples.length, this.rate);
    buffer.copyToChannel(samples as Float32Array<ArrayBuffer>, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.next = Math.max(this.next, this.context.currentTime + 0.05);
    source.start(this.next);
    this.next += buffer.duration;
  }

  get seconds(): number {
    const total = this.chunks.reduce((n, c) => n + c.length, 0);
    return this.rate ? total / this.rate : 0;
  }

  /** Everything received so far as one WAV, for an <audio controls> element. */
  wavUrl(): string {
    const total = this.chunks.reduce((n, c) => n + c.length, 0);
    const all = new Float32Array(total);
    let offset = 0;
    for (const chunk of this.chunks) {
      all.set(chunk, offset);
      offset += chunk.length;
    }
    const wav = wavBytes(all, this.rate || 16000);
    return URL.createObjectURL(new Blob([wav as BlobPart], { type: "audio/wav" }));
  }
}

/** Records the microphone as mono float samples (ScriptProcessor: no worklet file needed). */
export class MicRecorder {
  private stream: MediaStream | null = null;
  private context: AudioContext | null = null;
  private node: ScriptProcessorNode | null = null;
  private chunks: Float32Array[] = [];

  get recording(): boolean {
    return this.stream !== null;
  }

  async start(): Promise<void> {
    this.chunks = [];
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.context = new AudioContext();
    const source = this.context.createMediaStreamSource(this.stream);
    this.node = this.context.createScriptProcessor(4096, 1, 1);
    this.node.onaudioprocess = (e) => this.chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    source.connect(this.node);
    this.node.connect(this.context.destination);
  }

  /** Stops and returns the recording as WAV bytes with its duration. */
  async stop(): Promise<{ wav: Uint8Array; seconds: number }> {
    const rate = this.context?.sampleRate ?? 48000;
    this.node?.disconnect();
    this.stream?.getTracks().forEach((t) => t.stop());
    await this.context?.close();
    this.stream = null;
    this.context = null;
    this.node = null;
    const total = this.chunks.reduce((n, c) => n + c.length, 0);
    const all = new Float32Array(total);
    let offset = 0;
    for (const chunk of this.chunks) {
      all.set(chunk, offset);
      offset += chunk.length;
    }
    return { wav: wavBytes(all, rate), seconds: total / rate };
  }
}

export const WAV = AudioFormat.WAV;
