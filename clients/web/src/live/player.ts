// Gapless playback of a session's streamed speech: each PCM chunk becomes an AudioBuffer
// scheduled to start exactly where the previous one ends (Web Audio's clock, not timers), so
// chunks play back to back without clicks. flush() stops everything at once (barge-in).

/** Lead time before the first chunk of a run, so the next chunk can arrive before it ends. */
const LEAD_SECONDS = 0.08;

export interface PlaybackStats {
  /** Buffers scheduled since the session started. */
  scheduled: number;
  /** Seconds of speech scheduled. */
  scheduledSeconds: number;
  /** Seconds of buffers that played to their end (not cut off by a flush). */
  playedSeconds: number;
  /** Times playback ran dry in the middle of a reply and restarted. */
  underruns: number;
  /** Times playback was cut off (barge-in, stop). */
  flushes: number;
}

export class StreamPlayer {
  private context: AudioContext | null = null;
  private next = 0; // context time where the next buffer starts
  private sources = new Set<AudioBufferSourceNode>();
  private replyStarted = false; // a chunk of the current reply was scheduled
  readonly stats: PlaybackStats = { scheduled: 0, scheduledSeconds: 0, playedSeconds: 0, underruns: 0, flushes: 0 };

  /** Creates (or resumes) the output context; call it from a click so autoplay rules allow it. */
  async unlock(): Promise<void> {
    this.context ??= new AudioContext();
    if (this.context.state === "suspended") await this.context.resume().catch(() => undefined);
  }

  get state(): string {
    return this.context?.state ?? "none";
  }

  /** True while scheduled speech is still ahead of the clock. */
  get playing(): boolean {
    return !!this.context && this.sources.size > 0 && this.context.currentTime < this.next;
  }

  /** Seconds of scheduled speech not played yet. */
  get pending(): number {
    return this.context ? Math.max(0, this.next - this.context.currentTime) : 0;
  }

  push(samples: Float32Array, rate: number): void {
    if (!samples.length || !rate) return;
    this.context ??= new AudioContext();
    const context = this.context;
    const buffer = context.createBuffer(1, samples.length, rate);
    buffer.copyToChannel(samples as Float32Array<ArrayBuffer>, 0);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    const now = context.currentTime;
    if (this.next < now) {
      // Ran dry: in the middle of a reply that is an underrun. Start again a little ahead.
      if (this.replyStarted) this.stats.underruns++;
      this.next = now + LEAD_SECONDS;
    }
    this.replyStarted = true;
    source.start(this.next);
    this.next += buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      if (this.sources.delete(source)) this.stats.playedSeconds += buffer.duration;
    };
    this.stats.scheduled++;
    this.stats.scheduledSeconds += buffer.duration;
  }

  /** The next chunk starts a new reply (a gap before it is not an underrun). */
  newReply(): void {
    this.replyStarted = false;
  }

  /** Stops all scheduled speech now; returns the seconds that were cut. */
  flush(): number {
    if (!this.context) return 0;
    const cut = this.pending;
    const now = this.context.currentTime;
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        /* never started */
      }
    }
    if (this.sources.size) this.stats.flushes++;
    this.sources.clear();
    this.next = now;
    this.replyStarted = false;
    return cut;
  }

  async close(): Promise<void> {
    this.flush();
    await this.context?.close().catch(() => undefined);
    this.context = null;
  }
}
