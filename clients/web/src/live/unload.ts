// Closing the tab closes the session. The page's own calls are cancelled when it unloads, so
// CloseSession goes out as a keepalive fetch (which the browser finishes after the page is
// gone), on the same edge and key as the page's other calls (the header's fields).
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { defaultEdge } from "../connection";
import { OmniService } from "../gen/mmserve/omni/v1/omni_pb";

function edgeAndKey(): { edge: string; key: string } {
  const edge = (document.getElementById("edge") as HTMLInputElement | null)?.value || defaultEdge();
  const key = (document.getElementById("api-key") as HTMLInputElement | null)?.value ?? "";
  return { edge: edge.replace(/\/$/, ""), key };
}

/** Sends CloseSession so that it outlives the page. Best effort: nothing waits for it. */
export function closeOnUnload(sessionId: string): void {
  const { edge, key } = edgeAndKey();
  const transport = createGrpcWebTransport({
    baseUrl: edge,
    fetch: (input, init) => globalThis.fetch(input, { ...init, keepalive: true }),
    interceptors: [
      (next) => async (req) => {
        if (key) req.header.set("authorization", `Bearer ${key}`);
        return next(req);
      },
    ],
  });
  void createClient(OmniService, transport)
    .closeSession({ sessionId })
    .catch(() => undefined);
}

/** Calls `close` once when the page goes away (pagehide, or beforeunload where it comes first). */
export function onPageExit(close: () => void): () => void {
  let done = false;
  const handler = () => {
    if (done) return;
    done = true;
    close();
  };
  window.addEventListener("pagehide", handler);
  window.addEventListener("beforeunload", handler);
  return () => {
    window.removeEventListener("pagehide", handler);
    window.removeEventListener("beforeunload", handler);
  };
}
