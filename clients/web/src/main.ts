// The playground page: connection settings, one tab per capability, health of each service.
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { connect, defaultEdge, SERVICES, type Clients } from "./connection";
import { h } from "./dom";
import { attachModelNotice } from "./notice";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb";
import { omniPanel } from "./panels/omni";
import { t2iPanel } from "./panels/t2i";
import { visionPanel } from "./panels/vision";
import { vlPanel } from "./panels/vl";
import "./style.css";

const edgeInput = document.getElementById("edge") as HTMLInputElement;
const keyInput = document.getElementById("api-key") as HTMLInputElement;
const healthView = document.getElementById("health")!;
edgeInput.value = defaultEdge();
keyInput.value = new URLSearchParams(location.search).get("key") ?? "";

let clients: Clients = connect(edgeInput.value, keyInput.value);
const current = () => clients;

const panels: Record<keyof Clients, HTMLElement> = {
  t2i: t2iPanel(current),
  vl: vlPanel(current),
  vision: visionPanel(current),
  omni: omniPanel(current),
};
const titles: Record<keyof Clients, string> = {
  t2i: "Text to image",
  vl: "Image chat",
  vision: "Vision",
  omni: "Omni",
};
const notices = (Object.keys(panels) as (keyof Clients)[]).map((name) =>
  attachModelNotice(name, panels[name], current),
);
const tabs = document.getElementById("tabs")!;
const main = document.getElementById("panels")!;

function show(name: keyof Clients): void {
  for (const [key, panel] of Object.entries(panels)) {
    panel.hidden = key !== name;
  }
  for (const button of tabs.querySelectorAll("button")) {
    button.classList.toggle("active", button.dataset.panel === name);
  }
  panels[name].dispatchEvent(new Event("show"));
  history.replaceState(null, "", `#${name}`);
}

for (const name of Object.keys(panels) as (keyof Clients)[]) {
  const button = h("button", { id: `tab-${name}`, "data-panel": name, text: titles[name] });
  button.onclick = () => show(name);
  tabs.append(button);
  main.append(panels[name]);
}

/** grpc.health.v1 per service, through the edge (the edge answers for every capability). */
async function checkHealth(): Promise<void> {
  const client = createClient(Health, createGrpcWebTransport({ baseUrl: edgeInput.value }));
  const parts: string[] = [];
  for (const [name, service] of Object.entries(SERVICES)) {
    try {
      const reply = await client.check({ service: service.typeName });
      const serving = reply.status === HealthCheckResponse_ServingStatus.SERVING;
      parts.push(`${name} ${serving ? "✓" : "…"}`);
    } catch {
      parts.push(`${name} ✗`);
    }
  }
  healthView.textContent = parts.join("  ");
}

const reconnect = () => {
  clients = connect(edgeInput.value.replace(/\/$/, ""), keyInput.value);
  void checkHealth();
  for (const refresh of notices) void refresh();
};
edgeInput.onchange = reconnect;
keyInput.onchange = reconnect;

const initial = location.hash.slice(1) as keyof Clients;
show(initial in panels ? initial : "t2i");
void checkHealth();
