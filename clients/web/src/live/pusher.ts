// Input of a live session, one PushSessionInput at a time. The server wants sequence numbers
// without gaps, and concurrent unary calls may arrive out of order, so pushes are serial; audio
// that piles up behind a slow push is merged into the next one (up to a bound) instead of
// queueing many small calls. A refused chunk does not use up its sequence number.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { AudioFormat, ImageFormat } from "../gen/mmserve/common/v1/media_pb";
import type { OmniService, PushSessionInputRequestSchema } from "../gen/mmserve/omni/v1/omni_pb";

type Input =
  | { case: "audio"; pcm: Uint8Array }
  | { case: "image"; data: Uint8Array; format: ImageFormat }
  | { case: "text"; text: string };

interface Item {
  input: Input | null;
  endOfTurn: boolean;
}

type Omni = Client<typeof OmniService>;
type PushRequest = MessageInitShape<typeof PushSessionInputRequestSchema>;

const RETRIES = 4;

export class InputPusher {
  private queue: Item[] = [];
  private sequence = 0n;
  private running = false;
  private closed = false;
  /** Chunks the server acknowledged. */
  acked = 0;
  /** Chunks dropped because the server refused them (paused, closed, bad input). */
  refused = 0;

  constructor(
    private readonly client: Omni,
    private readonly sessionId: string,
    private readonly rate: number,
    /** Audio merged into one push at most (bytes); keep under session_max_chunk_ms. */
    private readonly maxAudioBytes: number,
    private readonly onError: (error: ConnectError) => void,
  ) {}

  audio(pcm: Uint8Array): void {
    const last = this.queue.at(-1);
    if (last?.input?.case === "audio" && !last.endOfTurn && last.input.pcm.length + pcm.length <= this.maxAudioBytes) {
      const merged = new Uint8Array(last.input.pcm.length + pcm.length);
      merged.set(last.input.pcm);
      merged.set(pcm, last.input.pcm.length);
      last.input.pcm = merged;
    } else {
      this.enqueue({ input: { case: "audio", pcm }, endOfTurn: false });
    }
  }

  image(data: Uint8Array, format: ImageFormat): void {
    // Only the newest frame matters: a frame still waiting is replaced.
    const waiting = this.queue.findIndex((item) => item.input?.case === "image" && !item.endOfTurn);
    if (waiting >= 0) this.queue.splice(waiting, 1);
    this.enqueue({ input: { case: "image", data, format }, endOfTurn: false });
  }

  text(text: string, endOfTurn: boolean): void {
    this.enqueue({ input: { case: "text", text }, endOfTurn });
  }

  endOfTurn(): void {
    this.enqueue({ input: null, endOfTurn: true });
  }

  /** Drops what is waiting (pause): nothing is sent for audio captured before. */
  clear(): void {
    this.queue = [];
  }

  close(): void {
    this.closed = true;
    this.queue = [];
  }

  private enqueue(item: Item): void {
    if (this.closed) return;
    this.queue.push(item);
    if (!this.running) void this.drain();
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length && !this.closed) {
        const item = this.queue.shift()!;
        await this.send(item);
      }
    } finally {
      this.running = false;
    }
  }

  private request(item: Item): PushRequest {
    const request: PushRequest = { sessionId: this.sessionId, sequence: this.sequence, endOfTurn: item.endOfTurn };
    const input = item.input;
    if (input?.case === "audio") {
      const source = { case: "data" as const, value: input.pcm };
      request.input = { case: "audio", value: { source, format: AudioFormat.PCM_S16LE, sampleRateHz: this.rate } };
    } else if (input?.case === "image") {
      request.input = { case: "image", value: { source: { case: "data", value: input.data }, format: input.format } };
    } else if (input?.case === "text") {
      request.input = { case: "text", value: input.text };
    }
    return request;
  }

  private async send(item: Item): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        // The same sequence number on a retry: the server ignores a chunk it already took.
        await this.client.pushSessionInput(this.request(item));
        this.sequence += 1n;
        this.acked++;
        return;
      } catch (raw) {
        const error = ConnectError.from(raw);
        const transient = [Code.Unavailable, Code.ResourceExhausted, Code.DeadlineExceeded, Code.Unknown].includes(
          error.code,
        );
        if (transient && attempt < RETRIES && !this.closed) {
          await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
          continue;
        }
        this.refused++;
        this.onError(error);
        return;
      }
    }
  }
}
