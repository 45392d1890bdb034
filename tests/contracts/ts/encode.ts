// Cross-language wire check, TypeScript side. tests/contracts/test_ts_stubs.py compiles this
// file (with the gen/ts stubs) to CommonJS in a temp dir, runs it with node, and decodes each
// printed line with the generated Python classes: {"type", "binary" (hex), "json"}.
import { create, type DescMessage, type MessageShape, toBinary, toJsonString } from "@bufbuild/protobuf";

import { Role } from "../../../gen/ts/mmserve/common/v1/chat_pb";
import { AudioFormat, ImageFormat } from "../../../gen/ts/mmserve/common/v1/media_pb";
import { ChatRequestSchema as OmniChatRequestSchema } from "../../../gen/ts/mmserve/omni/v1/omni_pb";
import { TextToImageRequestSchema } from "../../../gen/ts/mmserve/t2i/v1/t2i_pb";

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function emit<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): void {
  const line = {
    type: schema.typeName,
    binary: hex(toBinary(schema, message)),
    json: toJsonString(schema, message),
  };
  console.log(JSON.stringify(line));
}

emit(
  TextToImageRequestSchema,
  create(TextToImageRequestSchema, {
    params: {
      prompt: "a red fox in the snow, 雪",
      negativePrompt: "blurry",
      width: 768,
      height: 512,
      numInferenceSteps: 0, // optional: explicitly set to zero keeps presence
      guidanceScale: 4.5,
      seed: 18446744073709551615n, // max uint64
      numImages: 2,
      outputFormat: ImageFormat.WEBP,
      outputQuality: 85,
    },
    preview: { everyNSteps: 5, maxSide: 128 },
  }),
);

emit(
  OmniChatRequestSchema,
  create(OmniChatRequestSchema, {
    messages: [
      { role: Role.SYSTEM, content: [{ part: { case: "text", value: "Be brief." } }] },
      {
        role: Role.USER,
        content: [
          {
            part: {
              case: "audio",
              value: {
                source: { case: "data", value: new Uint8Array([0, 1, 254, 255]) },
                format: AudioFormat.PCM_S16LE,
                sampleRateHz: 16000,
                channels: 1,
              },
            },
          },
          {
            part: {
              case: "image",
              value: { source: { case: "data", value: new Uint8Array([0x89, 0x50, 0x4e, 0x47]) } },
            },
          },
        ],
      },
    ],
    sampling: { maxNewTokens: 32, temperature: 0, seed: 7n, stop: ["</s>", "\n\n"] },
    speech: { enabled: true, voice: "voice-1", chunkMs: 200 },
  }),
);
