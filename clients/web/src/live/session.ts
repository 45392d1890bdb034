// One live session from the browser: OpenSession, the microphone pushed as PCM chunks
// (PushSessionInput, serial), StreamSessionEvents read into callbacks (reconnecting when the
// stream drops while the session lives: a new reader replaces the old one), playback of the
// reply's speech, barge-in, pause, resume and close.
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { FinishReason } from "../gen/mmserve/common/v1/chat_pb";
import { ImageFormat } from "../gen/mmserve/common/v1/media_pb";
import {
  SessionMode,
  SessionState,
  type OmniService,
  type StreamSessionEventsResponse,
} from "../gen/mmserve/omni/v1/omni_pb";
import { pcmSamples } from "../media";
import { MicCapture, type CaptureKind } from "./capture";
import { InputPusher } from "./pusher";
import { StreamPlayer } from "./player";

type Omni = Client<typeof OmniService>;

export interface Latency {
  transcript?: number;
  text?: number;
  /** To the first audio chunk's arrival (playback starts a few tens of ms later). */
  audio?: number;
}

/** The rate the page pushes at: what speech recognizers and VAD use, and the server default. */
export const INPUT_RATE = 16000;
const CHUNK_MS = 100;
/** Audio merged into one push at most when pushes lag (under every sane session_max_chunk_ms). */
const MAX_MERGED_MS = 1000;
const RECONNECTS = 5;

export interface LiveOptions {
  mode: SessionMode;
  speech: boolean;
  voice: string;
  maxNewTokens?: number;
  systemPrompt: string;
  capture?: CaptureKind;
}

/** What the session tells the page. */
export interface LiveView {
  state(state: SessionState, reason: string): void;
  transcript(turn: number, text: string, final: boolean): void;
  delta(turn: number, text: string): void;
  turnDone(turn: number, finish: FinishReason): void;
  queue(text: string): void;
  bargeIn(turn: number, cutSeconds: number): void;
  problem(text: string): void;
  changed(): void;
}

export function isDuplex(mode: SessionMode): boolean {
  return mode === SessionMode.AUDIO_DUPLEX || mode === SessionMode.OMNI_DUPLEX;
}

export class LiveSession {
  readonly player = new StreamPlayer();
  private mic: MicCapture | null = null;
  private pusher: InputPusher | null = null;
  private readonly abort = new AbortController();
  sessionId = "";
  state = SessionState.UNSPECIFIED;
  closed = false;
  outputRate = 0;
  pauseTimeout = 0;
  orphanTimeout = 0;
  /** The turn of the latest event: the one a typed turn joins while the session listens. */
  turn = 0;
  /** Audio of turns before this one is dropped (an interrupted reply's late chunks). */
  private playFrom = 0;
  counts = { transcripts: 0, deltas: 0, audio: 0, turns: 0, bargeIns: 0, reconnects: 0, events: 0 };
  /** Seconds from the end of the user's speech (as VAD saw it) to each part of the reply. */
  latency: Latency = {};
  private speechEnded = 0;
  /** Set from the pause click until the resume: a push refused meanwhile is expected. */
  private pausing = false;
  level = 0;

  constructor(
    private readonly client: Omni,
    readonly options: LiveOptions,
    private readonly view: LiveView,
  ) {}

  get captureKind(): string {
    return this.mic?.kind ?? "";
  }

  get micRate(): number {
    return this.mic?.deviceRate ?? 0;
  }

  get pushed(): number {
    return this.pusher?.acked ?? 0;
  }

  /** Opens the session, then starts the microphone and the event reader. Call from a click. */
  async start(): Promise<void> {
    await this.player.unlock();
    const opened = await this.client.openSession({
      mode: this.options.mode,
      systemPrompt: this.options.systemPrompt,
      sampling: { maxNewTokens: this.options.maxNewTokens },
      speech: { enabled: this.options.speech, voice: this.options.voice },
      inputSampleRateHz: INPUT_RATE,
    });
    this.sessionId = opened.sessionId;
    this.outputRate = opened.outputSampleRateHz;
    this.pauseTimeout = opened.pauseTimeoutSeconds;
    this.orphanTimeout = opened.orphanTimeoutSeconds;
    this.pusher = new InputPusher(
      this.client,
      this.sessionId,
      INPUT_RATE,
      (INPUT_RATE * 2 * MAX_MERGED_MS) / 1000,
      (error) => this.pushFailed(error),
    );
    void this.readEvents();
    if (this.options.mode === SessionMode.CHAT) return; // turn-based: the page sends turns
    await this.startMic();
  }

  private async startMic(): Promise<void> {
    this.mic = new MicCapture({
      rate: INPUT_RATE,
      chunkMs: CHUNK_MS,
      prefer: this.options.capture,
      onChunk: (pcm, level) => {
        this.level = level;
        if (!this.pausing && !this.closed) this.pusher?.audio(pcm);
      },
    });
    this.mic.onEnded = () => {
      if (!this.closed) this.view.problem("the microphone stopped (unplugged or permission revoked)");
    };
    try {
      await this.mic.start();
    } catch (error) {
      this.view.problem(`microphone: ${error}`);
      throw error;
    }
  }

  /** CHAT mode: one typed turn. */
  sendText(text: string): void {
    this.pusher?.text(text, true);
  }

  /** A camera frame (OMNI_DUPLEX), sent when the push queue reaches it. */
  sendFrame(jpeg: Uint8Array): void {
    if (!this.pausing && !this.closed) this.pusher?.image(jpeg, ImageFormat.JPEG);
  }

  /** Ends the user's turn now (what VAD would find after the silence window). */
  endTurn(): void {
    this.pusher?.endOfTurn();
  }

  async pause(): Promise<void> {
    this.pausing = true;
    this.mic?.setLive(false);
    this.pusher?.clear();
    this.player.flush();
    try {
      const reply = await this.client.pauseSession({ sessionId: this.sessionId });
      this.state = reply.state;
    } catch (error) {
      // Not paused after all: keep listening.
      this.pausing = false;
      this.mic?.setLive(true);
      throw error;
    } finally {
      this.view.changed();
    }
  }

  async resume(): Promise<void> {
    const reply = await this.client.resumeSession({ sessionId: this.sessionId });
    this.state = reply.state;
    this.pausing = false;
    this.mic?.setLive(true);
    this.view.changed();
  }

  /** Closes the session; the event stream then ends with CLOSED. */
  async close(): Promise<number> {
    this.pusher?.close();
    await this.stopMedia();
    try {
      const reply = await this.client.closeSession({ sessionId: this.sessionId });
      return reply.turns;
    } finally {
      // The CLOSED event normally ends the reader; do not wait on a stuck proxy for it.
      setTimeout(() => this.abort.abort(), 3000);
    }
  }

  private async stopMedia(): Promise<void> {
    await this.mic?.stop();
    await this.player.close();
  }

  private pushFailed(error: ConnectError): void {
    // Input refused while pausing or after close is expected; anything else is shown.
    if (this.closed || (error.code === Code.FailedPrecondition && this.pausing)) return;
    this.view.problem(`input: ${error.rawMessage}`);
  }

  private async readEvents(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      try {
        const stream = this.client.streamSessionEvents({ sessionId: this.sessionId }, { signal: this.abort.signal });
        for await (const event of stream) {
          failures = 0;
          this.handle(event);
        }
        if (this.closed) break;
      } catch (raw) {
        const error = ConnectError.from(raw);
        if (this.closed || this.abort.signal.aborted) break;
        const gone = error.code === Code.NotFound || error.code === Code.FailedPrecondition;
        if (gone || ++failures > RECONNECTS) {
          this.ended(gone ? error.rawMessage : `event stream lost: ${error.rawMessage}`);
          break;
        }
      }
      // The stream ended without CLOSED (a proxy timeout, a network blip): read again.
      this.counts.reconnects++;
      await new Promise((r) => setTimeout(r, 300 * 2 ** failures));
    }
  }

  private ended(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.state = SessionState.CLOSED;
    this.pusher?.close();
    void this.stopMedia();
    this.view.state(SessionState.CLOSED, reason);
  }

  private handle(event: StreamSessionEventsResponse): void {
    this.counts.events++;
    this.turn = event.turn;
    const e = event.event;
    switch (e.case) {
      case "state": {
        const { state, reason } = e.value;
        if (state === SessionState.CLOSED) {
          this.ended(reason);
          return;
        }
        if (reason === "barge-in") this.interrupt(event.turn);
        if (reason === "vad: speech ended") {
          this.speechEnded = performance.now();
          this.latency = {};
        }
        this.state = state;
        this.view.state(state, reason);
        break;
      }
      case "transcript":
        if (e.value.isFinal) this.counts.transcripts++;
        this.mark("transcript");
        this.view.transcript(event.turn, e.value.text, e.value.isFinal);
        break;
      case "delta":
        this.counts.deltas++;
        this.mark("text");
        this.view.delta(event.turn, e.value.text);
        break;
      case "audio": {
        const audio = e.value.audio;
        if (!audio || event.turn < this.playFrom || this.state === SessionState.PAUSED) break;
        if (e.value.index === 0) this.player.newReply();
        this.counts.audio++;
        this.mark("audio");
        this.player.push(pcmSamples(audio), audio.sampleRateHz || this.outputRate);
        break;
      }
      case "turnCompleted":
        this.counts.turns++;
        if (e.value.finishReason === FinishReason.CANCELLED) this.interrupt(event.turn + 1);
        this.view.turnDone(event.turn, e.value.finishReason);
        break;
      case "queue": {
        const q = e.value;
        const eta = q.etaSeconds > 0 ? `, starts in ~${q.etaSeconds.toFixed(1)}s` : "";
        this.view.queue(`waiting for the device: position ${q.position} of ${q.queueLength}${eta}`);
        break;
      }
      default:
        break;
    }
    this.view.changed();
  }

  private mark(part: keyof Latency): void {
    if (this.speechEnded && this.latency[part] === undefined) {
      this.latency[part] = (performance.now() - this.speechEnded) / 1000;
    }
  }

  /** The user spoke over the reply: its speech stops now, late chunks of it are dropped. */
  private interrupt(nextTurn: number): void {
    if (nextTurn <= this.playFrom) return;
    this.playFrom = nextTurn;
    const cut = this.player.flush();
    this.counts.bargeIns++;
    this.view.bargeIn(nextTurn - 1, cut);
  }
}
