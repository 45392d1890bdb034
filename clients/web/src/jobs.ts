// One running job of a panel: its stream's AbortController and job id. Stopping aborts the
// fetch and also calls CancelJob, because a cancelled fetch may not reach the server through
// every proxy (the contract asks browsers to cancel explicitly).
import type { QueueStatus, Progress } from "./gen/mmserve/common/v1/job_pb";

interface Cancellable {
  cancelJob(request: { jobId: string }): Promise<unknown>;
}

export class JobRun {
  readonly abort = new AbortController();
  jobId = "";

  constructor(private readonly client: Cancellable) {}

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    if (this.jobId) {
      await this.client.cancelJob({ jobId: this.jobId }).catch(() => undefined);
    }
  }
}

export function seconds(value: number): string {
  return value < 60 ? `${value.toFixed(1)}s` : `${Math.floor(value / 60)}m${Math.round(value % 60)}s`;
}

export function queueText(queue: QueueStatus | undefined): string {
  if (!queue) return "queued";
  const eta = queue.etaSeconds > 0 ? `, starts in ~${seconds(queue.etaSeconds)}` : "";
  return `queued: position ${queue.position} of ${queue.queueLength}${eta}`;
}

export function progressText(progress: Progress | undefined): string {
  if (!progress) return "";
  const eta = progress.etaSeconds > 0 ? `, ETA ${seconds(progress.etaSeconds)}` : "";
  return `step ${progress.step}/${progress.totalSteps || "?"} (${seconds(progress.elapsedSeconds)}${eta})`;
}
