// The microphone as a stream of PCM chunks at a session's input rate: getUserMedia, an
// AudioWorklet (or a ScriptProcessor where worklets are missing) that hands raw frames to the
// page, the resampler, and fixed-length chunks of PCM_S16LE.
import { pcm16, Resampler } from "./resample";

/** Collects 128-frame render quanta into blocks of 2048 and posts them (transferred). */
const WORKLET_SOURCE = `
class MmserveCapture extends AudioWorkletProcessor {
  constructor() { super(); this.block = new Float32Array(2048); this.filled = 0; }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const n = Math.min(channel.length - offset, this.block.length - this.filled);
        this.block.set(channel.subarray(offset, offset + n), this.filled);
        this.filled += n;
        offset += n;
        if (this.filled === this.block.length) {
          this.port.postMessage(this.block, [this.block.buffer]);
          this.block = new Float32Array(2048);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("mmserve-capture", MmserveCapture);
`;

export type CaptureKind = "worklet" | "script";

export interface CaptureOptions {
  /** Sample rate of the chunks handed out, in Hz. */
  rate: number;
  /** Length of each chunk in milliseconds. */
  chunkMs: number;
  /** "script" forces the ScriptProcessor path (older browsers; tests). */
  prefer?: CaptureKind;
  onChunk: (pcm: Uint8Array, level: number) => void;
}

export class MicCapture {
  private stream: MediaStream | null = null;
  private context: AudioContext | null = null;
  private nodes: AudioNode[] = [];
  private resampler: Resampler | null = null;
  private pending: Float32Array[] = [];
  private pendingLength = 0;
  kind: CaptureKind = "worklet";
  deviceRate = 0;
  /** While false, captured audio is dropped (pause): the track is muted too. */
  private live = true;

  constructor(private readonly options: CaptureOptions) {}

  /** Called when the device goes away (unplugged, revoked permission). */
  onEnded: (() => void) | null = null;

  async start(): Promise<void> {
    this.stream = await navigator.mediaDevices.getUserMedia({
      // Echo cancellation matters in duplex modes: the model's own speech from the speakers
      // would otherwise interrupt it.
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    this.stream.getAudioTracks().forEach((t) => (t.onended = () => this.onEnded?.()));
    const context = new AudioContext();
    this.context = context;
    this.deviceRate = context.sampleRate;
    this.resampler = new Resampler(context.sampleRate, this.options.rate);
    const source = context.createMediaStreamSource(this.stream);
    const useWorklet = this.options.prefer !== "script" && "audioWorklet" in context;
    if (useWorklet) {
      const url = URL.createObjectURL(new Blob([WORKLET_SOURCE], { type: "text/javascript" }));
      try {
        await context.audioWorklet.addModule(url);
      } finally {
        URL.revokeObjectURL(url);
      }
      const node = new AudioWorkletNode(context, "mmserve-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        channelCount: 1,
        channelCountMode: "explicit",
      });
      node.port.onmessage = (e: MessageEvent<Float32Array>) => this.take(e.data);
      source.connect(node);
      this.nodes = [source, node];
      this.kind = "worklet";
    } else {
      const node = context.createScriptProcessor(2048, 1, 1);
      node.onaudioprocess = (e) => this.take(new Float32Array(e.inputBuffer.getChannelData(0)));
      // A ScriptProcessor runs only while connected to the destination; its output is silence.
      source.connect(node);
      node.connect(context.destination);
      this.nodes = [source, node];
      this.kind = "script";
    }
    // A context made without a user gesture may start suspended.
    if (context.state === "suspended") await context.resume();
  }

  /** Pause keeps the device open but sends nothing (and mutes the track). */
  setLive(live: boolean): void {
    this.live = live;
    this.stream?.getAudioTracks().forEach((t) => (t.enabled = live));
    if (!live) {
      this.pending = [];
      this.pendingLength = 0;
    }
  }

  async stop(): Promise<void> {
    for (const node of this.nodes) node.disconnect();
    this.nodes = [];
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    await this.context?.close().catch(() => undefined);
    this.context = null;
  }

  private take(frames: Float32Array): void {
    if (!this.live || !this.resampler) return;
    const samples = this.resampler.push(frames);
    this.pending.push(samples);
    this.pendingLength += samples.length;
    const size = Math.round((this.options.rate * this.options.chunkMs) / 1000);
    while (this.pendingLength >= size) {
      const chunk = new Float32Array(size);
      let filled = 0;
      while (filled < size) {
        const head = this.pending[0];
        const n = Math.min(head.length, size - filled);
        chunk.set(head.subarray(0, n), filled);
        filled += n;
        if (n === head.length) this.pending.shift();
        else this.pending[0] = head.subarray(n);
      }
      this.pendingLength -= size;
      let energy = 0;
      for (const s of chunk) energy += s * s;
      this.options.onChunk(pcm16(chunk), Math.sqrt(energy / size));
    }
  }
}
