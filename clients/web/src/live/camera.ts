// Camera frames for sessions that take video (OMNI_DUPLEX): a small preview, and a JPEG of the
// current frame every interval, scaled so its longer side is at most `maxSide` pixels.

export class CameraFrames {
  private stream: MediaStream | null = null;
  private timer: number | undefined;
  private readonly canvas = document.createElement("canvas");
  sent = 0;

  constructor(
    readonly preview: HTMLVideoElement,
    private readonly onFrame: (jpeg: Uint8Array) => void,
    private readonly intervalMs = 1000,
    private readonly maxSide = 448,
  ) {}

  get running(): boolean {
    return this.stream !== null;
  }

  async start(): Promise<void> {
    this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    this.preview.srcObject = this.stream;
    this.preview.muted = true;
    await this.preview.play().catch(() => undefined);
    this.timer = window.setInterval(() => void this.grab(), this.intervalMs);
  }

  stop(): void {
    window.clearInterval(this.timer);
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.preview.srcObject = null;
  }

  private async grab(): Promise<void> {
    const { videoWidth: width, videoHeight: height } = this.preview;
    if (!width || !height) return;
    const scale = Math.min(1, this.maxSide / Math.max(width, height));
    this.canvas.width = Math.round(width * scale);
    this.canvas.height = Math.round(height * scale);
    this.canvas.getContext("2d")?.drawImage(this.preview, 0, 0, this.canvas.width, this.canvas.height);
    const blob = await new Promise<Blob | null>((r) => this.canvas.toBlob(r, "image/jpeg", 0.8));
    if (!blob || !this.running) return;
    this.sent++;
    this.onFrame(new Uint8Array(await blob.arrayBuffer()));
  }
}
