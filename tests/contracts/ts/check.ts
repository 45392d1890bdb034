// Compile-time contract check for the TypeScript stubs (protoc-gen-es v2, `make protos-ts`).
// tests/contracts/test_ts_stubs.py runs `tsc -p tests/contracts/ts` (strict, noEmit): every
// service descriptor must be usable by connect-web clients, every capability's request must be
// buildable with create(), and stream events must narrow on their oneof case. Nothing here runs
// and no call is made (the transport points at a closed port).
import { create } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { Role } from "../../../gen/ts/mmserve/common/v1/chat_pb";
import { CancelJobRequestSchema, GetJobRequestSchema, JobState } from "../../../gen/ts/mmserve/common/v1/job_pb";
import { AudioFormat, ImageFormat } from "../../../gen/ts/mmserve/common/v1/media_pb";
import { ModelState } from "../../../gen/ts/mmserve/common/v1/model_pb";
import {
  ChatRequestSchema as OmniChatRequestSchema,
  OmniService,
  PushSessionInputRequestSchema,
  SessionMode,
} from "../../../gen/ts/mmserve/omni/v1/omni_pb";
import {
  ImageGenerationService,
  ImageToImageRequestSchema,
  TextToImageRequestSchema,
} from "../../../gen/ts/mmserve/t2i/v1/t2i_pb";
import {
  EmbedImagesRequestSchema,
  Pooling,
  RankRequestSchema,
  SimilarityMetric,
  VisionService,
} from "../../../gen/ts/mmserve/vision/v1/vision_pb";
import {
  ChatRequestSchema as VlChatRequestSchema,
  VisionLanguageService,
} from "../../../gen/ts/mmserve/vl/v1/vl_pb";

// Through Envoy's grpc_web filter in real use; port 1 here, never contacted.
const transport = createGrpcWebTransport({ baseUrl: "http://127.0.0.1:1" });

export const t2i: Client<typeof ImageGenerationService> = createClient(
  ImageGenerationService,
  transport,
);
export const vl: Client<typeof VisionLanguageService> = createClient(
  VisionLanguageService,
  transport,
);
export const vision: Client<typeof VisionService> = createClient(VisionService, transport);
export const omni: Client<typeof OmniService> = createClient(OmniService, transport);

const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47]);

export const t2iRequest = create(TextToImageRequestSchema, {
  params: {
    prompt: "a red fox in the snow",
    negativePrompt: "blurry",
    width: 512,
    height: 512,
    numInferenceSteps: 20,
    guidanceScale: 5.0,
    seed: 42n, // uint64 is a bigint
    outputFormat: ImageFormat.WEBP,
  },
  preview: { everyNSteps: 5, maxSide: 128 },
});

export const i2iRequest = create(ImageToImageRequestSchema, {
  params: { prompt: "as a watercolor" },
  image: { source: { case: "data", value: png }, format: ImageFormat.PNG },
  strength: 0.6,
});

export const vlRequest = create(VlChatRequestSchema, {
  messages: [
    {
      role: Role.USER,
      content: [
        { part: { case: "image", value: { source: { case: "data", value: png } } } },
        { part: { case: "text", value: "What is in this picture?" } },
      ],
    },
  ],
  sampling: { maxNewTokens: 64, temperature: 0, stop: ["\n\n"] },
  imageResolution: { maxPixels: 1003520 },
});

export const embedRequest = create(EmbedImagesRequestSchema, {
  images: [{ source: { case: "data", value: png }, format: ImageFormat.PNG }],
  normalize: true,
  pooling: Pooling.MEAN,
});

export const rankRequest = create(RankRequestSchema, {
  query: { input: { case: "text", value: "a dog" } },
  candidates: [{ input: { case: "image", value: { source: { case: "data", value: png } } } }],
  topK: 1,
  metric: SimilarityMetric.COSINE,
});

export const omniRequest = create(OmniChatRequestSchema, {
  messages: [
    {
      role: Role.USER,
      content: [
        {
          part: {
            case: "audio",
            value: {
              source: { case: "data", value: new Uint8Array(320) },
              format: AudioFormat.PCM_S16LE,
              sampleRateHz: 16000,
              channels: 1,
            },
          },
        },
      ],
    },
  ],
  speech: { enabled: true, voice: "default", chunkMs: 200 },
});

export const pushRequest = create(PushSessionInputRequestSchema, {
  sessionId: "s",
  sequence: 0n,
  input: { case: "text", value: "hello" },
  endOfTurn: true,
});

export const getJob = create(GetJobRequestSchema, { jobId: "j" });
export const cancelJob = create(CancelJobRequestSchema, { jobId: "j" });

function assertNever(x: never): never {
  throw new Error(`unexpected event ${String(x)}`);
}

// Never called: type-checks the streaming loop and the unary/job RPC signatures.
export async function uncalled(): Promise<void> {
  let images = 0;
  for await (const ev of t2i.streamTextToImage(t2iRequest)) {
    const jobId: string = ev.jobId;
    switch (ev.event.case) {
      case "accepted":
        console.log(jobId, ev.event.value.jobId, ev.event.value.queue?.position);
        break;
      case "queue":
        console.log(ev.event.value.position, ev.event.value.etaSeconds);
        break;
      case "step":
        console.log(ev.event.value.progress?.step, ev.event.value.preview?.format);
        break;
      case "heartbeat": {
        const state: JobState = ev.event.value.state;
        console.log(state === JobState.RUNNING);
        break;
      }
      case "result":
        for (const image of ev.event.value.images) {
          if (image.source.case === "data") {
            const bytes: Uint8Array = image.source.value;
            images += bytes.length > 0 ? 1 : 0;
          }
        }
        break;
      case undefined:
        break;
      default:
        assertNever(ev.event);
    }
  }

  for await (const ev of vl.streamChat(vlRequest)) {
    if (ev.event.case === "delta") {
      const text: string = ev.event.value.text;
      console.log(text);
    }
  }

  for await (const ev of omni.streamChat(omniRequest)) {
    if (ev.event.case === "audio") {
      const pcm = ev.event.value.audio?.source;
      console.log(pcm?.case === "data" ? pcm.value.byteLength : 0);
    }
  }

  const session = await omni.openSession({ mode: SessionMode.AUDIO_DUPLEX, sampling: {} });
  await omni.pushSessionInput({ ...pushRequest, sessionId: session.sessionId });
  for await (const ev of omni.streamSessionEvents({ sessionId: session.sessionId })) {
    if (ev.event.case === "turnCompleted") break;
  }

  const res = await t2i.textToImage(t2iRequest, { timeoutMs: 60_000 });
  const seed: bigint = res.result?.seed ?? 0n;
  const i2i = await t2i.imageToImage(i2iRequest);
  const emb = await vision.embedImages(embedRequest);
  const ranked = await vision.rank(rankRequest);
  const chat = await vl.chat(vlRequest);
  const job = await t2i.getJob(getJob);
  const cancelled = await vision.cancelJob(cancelJob);
  const info = await omni.getModelInfo({});
  const ready: boolean = info.modelInfo?.state === ModelState.READY;
  console.log(
    images,
    seed,
    i2i.result?.images.length,
    emb.dimension,
    ranked.results[0]?.score,
    chat.text,
    job.job?.state,
    cancelled.job?.state,
    ready,
    await vl.getModelInfo({}),
    await vision.getJob({ jobId: "j" }),
    await omni.cancelJob({ jobId: "j" }),
    await t2i.getModelInfo({}),
  );
}
