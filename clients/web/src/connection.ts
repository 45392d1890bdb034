// Where the playground sends its calls: Envoy's grpc-web listener, with the API key as a Bearer
// token. By default the page's own origin: `python -m gateway.stack` serves the page from the
// edge itself, so its calls are same-origin. ?edge=http://host:port (or the edge field at the
// top) points it at another edge, which must then allow the page's origin (--cors-origin).
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { DescService } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { OmniService } from "./gen/mmserve/omni/v1/omni_pb";
import { ImageGenerationService } from "./gen/mmserve/t2i/v1/t2i_pb";
import { VisionService } from "./gen/mmserve/vision/v1/vision_pb";
import { VisionLanguageService } from "./gen/mmserve/vl/v1/vl_pb";

export interface Clients {
  t2i: Client<typeof ImageGenerationService>;
  vl: Client<typeof VisionLanguageService>;
  vision: Client<typeof VisionService>;
  omni: Client<typeof OmniService>;
}

export const SERVICES: Record<keyof Clients, DescService> = {
  t2i: ImageGenerationService,
  vl: VisionLanguageService,
  vision: VisionService,
  omni: OmniService,
};

export function defaultEdge(): string {
  const given = new URLSearchParams(location.search).get("edge");
  return (given || location.origin).replace(/\/$/, "");
}

export function connect(edge: string, apiKey: string): Clients {
  const auth: Interceptor = (next) => async (req) => {
    if (apiKey) req.header.set("authorization", `Bearer ${apiKey}`);
    return next(req);
  };
  // Binary grpc-web: fetch streams deliver server-stream messages as they arrive.
  const transport = createGrpcWebTransport({ baseUrl: edge, interceptors: [auth] });
  return {
    t2i: createClient(ImageGenerationService, transport),
    vl: createClient(VisionLanguageService, transport),
    vision: createClient(VisionService, transport),
    omni: createClient(OmniService, transport),
  };
}

// google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }
// FieldViolation { string field = 1; string description = 2; }, decoded by hand: the
// playground needs nothing else from google.rpc.
function badRequest(bytes: Uint8Array): string[] {
  const found: string[] = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no !== 1) {
      reader.skip(wireType);
      continue;
    }
    const violation = new BinaryReader(reader.bytes());
    let field = "";
    let description = "";
    while (violation.pos < violation.len) {
      const [n, w] = violation.tag();
      if (n === 1) field = violation.string();
      else if (n === 2) description = violation.string();
      else violation.skip(w);
    }
    found.push(`${field}: ${description}`);
  }
  return found;
}

/** "INVALID_ARGUMENT: message" plus one line per field violation. */
export function describeError(error: unknown): string {
  const err = ConnectError.from(error);
  // Code names are CamelCase ("InvalidArgument"); show the gRPC spelling users know.
  const name = (Code[err.code] ?? String(err.code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  const lines = [`${name}: ${err.rawMessage}`];
  for (const detail of err.details) {
    if ("type" in detail && detail.type === "google.rpc.BadRequest") {
      lines.push(...badRequest(detail.value).map((v) => `  ${v}`));
    }
  }
  return lines.join("\n");
}

export function isCancel(error: unknown): boolean {
  return ConnectError.from(error).code === Code.Canceled;
}
