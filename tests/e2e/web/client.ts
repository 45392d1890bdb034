// The browser side of tests/e2e/test_browser.py: the generated TS stubs (gen/ts, protoc-gen-es
// v2) with connect-web's grpc-web transport (binary frames over fetch streams), through Envoy.
// The page runs its calls on load, exposes window.__phase and window.__results for the test,
// and has a Cancel button that calls CancelJob for the running job.
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { JobState } from "../../../gen/ts/mmserve/common/v1/job_pb";
import { ImageGenerationService } from "../../../gen/ts/mmserve/t2i/v1/t2i_pb";
import { VisionService } from "../../../gen/ts/mmserve/vision/v1/vision_pb";

const REPLICA_HEADER = "mmserve-replica";
const query = new URLSearchParams(location.search);
const transport = createGrpcWebTransport({
  baseUrl: query.get("edge") ?? "",
  useBinaryFormat: true,
});
const t2i = createClient(ImageGenerationService, transport);
const vision = createClient(VisionService, transport);

type Results = Record<string, unknown>;
const out: Results = {};
const win = window as unknown as { __phase?: string; __results?: Results };
const show = () => (document.getElementById("out")!.textContent = JSON.stringify(out, null, 2));
const since = (t0: number) => Math.round(performance.now() - t0);

function failure(e: unknown) {
  const err = ConnectError.from(e);
  return { code: err.code, message: err.rawMessage };
}

async function unary() {
  let jobId = "";
  const reply = await t2i.textToImage(
    { params: { prompt: "a fox in a browser", numInferenceSteps: 1, width: 8 } },
    { onHeader: (h) => (jobId = h.get("mmserve-job-id") ?? "") },
  );
  const source = reply.result?.images[0]?.source;
  const png = source?.case === "data" ? source.value : new Uint8Array();
  out.unary = { jobId, bytes: png.length, png: png[1] === 0x50 && png[2] === 0x4e };
  try {
    await t2i.textToImage({ params: { prompt: "too wide", width: 999 } });
    out.unaryError = "no error";
  } catch (e) {
    out.unaryError = failure(e);
  }
}

async function canvasPng(): Promise<Uint8Array> {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 48;
  const ctx = canvas.getContext("2d")!;
  ctx.fillStyle = "#c85028";
  ctx.fillRect(0, 0, 48, 48);
  const blob = await new Promise<Blob>((resolve) => canvas.toBlob((b) => resolve(b!), "image/png"));
  return new Uint8Array(await blob.arrayBuffer());
}

async function visionCalls() {
  // Unary calls of the vision service; the image travels as raw PNG bytes.
  const texts = await vision.embedTexts({ texts: ["a photo of a cat", "a red square"] });
  const images = await vision.embedImages({ images: [{ source: { case: "data", value: await canvasPng() } }] });
  out.vision = {
    textDimension: texts.dimension,
    texts: texts.embeddings.length,
    imageDimension: images.dimension,
    imageValues: images.embeddings[0]?.values.length ?? 0,
  };
}

async function stream() {
  // The server sleeps 0.2 s per step: each event must reach the page when it is sent.
  const t0 = performance.now();
  const events: { kind: string; ms: number }[] = [];
  const request = { params: { prompt: "streamed fox", numInferenceSteps: 5 } };
  for await (const event of t2i.streamTextToImage(request)) {
    events.push({ kind: event.event.case ?? "", ms: since(t0) });
  }
  out.stream = events;
}

async function cancellable() {
  // A long job (100 steps): the Cancel button ends it with CancelJob, pinned to its replica.
  let replica = "";
  let jobId = "";
  const button = document.getElementById("cancel") as HTMLButtonElement;
  button.onclick = async () => {
    button.disabled = true;
    const reply = await t2i.cancelJob({ jobId }, { headers: { [REPLICA_HEADER]: replica } });
    out.cancelReply = { jobId: reply.job?.jobId, state: JobState[reply.job?.state ?? 0] };
  };
  const t0 = performance.now();
  let steps = 0;
  try {
    const request = { params: { prompt: "long fox", numInferenceSteps: 100 } };
    const options = { onHeader: (h: Headers) => (replica = h.get(REPLICA_HEADER) ?? "") };
    for await (const event of t2i.streamTextToImage(request, options)) {
      jobId = event.jobId;
      if (event.event.case === "step") {
        steps += 1;
        if (steps === 1) {
          document.getElementById("job")!.textContent = jobId;
          button.disabled = false;
          win.__phase = "running";
        }
      }
    }
    out.cancelled = { jobId, steps, error: null };
  } catch (e) {
    out.cancelled = { jobId, replica, steps, ms: since(t0), error: failure(e) };
  }
}

async function run() {
  if (query.get("mode") === "vision") {
    await visionCalls();
    return;
  }
  await unary();
  show();
  await stream();
  show();
  await cancellable();
}

run()
  .catch((e) => (out.fatal = String(e)))
  .finally(() => {
    show();
    win.__results = out;
  });
