// What a service says about its model, shown at the top of its panel: above all that a built-in
// model with random weights (the default local run) makes noise by design, and how to serve a
// real checkpoint instead. Asked each time the panel is shown, so a restarted service is seen.
import type { Clients } from "./connection";
import { h } from "./dom";

type InfoReply = { modelInfo?: { notice: string; randomWeights: boolean; modelId: string } };

export function attachModelNotice(
  name: keyof Clients,
  panel: HTMLElement,
  clients: () => Clients,
): () => Promise<void> {
  const banner = h("div", { id: `${name}-notice`, class: "notice", hidden: true });
  panel.prepend(banner);
  const refresh = async (): Promise<void> => {
    try {
      const client = clients()[name] as { getModelInfo(r: object): Promise<InfoReply> };
      const info = (await client.getModelInfo({})).modelInfo;
      banner.textContent = info?.notice ?? "";
      banner.hidden = !info?.notice;
      panel.dataset.randomWeights = String(info?.randomWeights ?? false);
    } catch {
      banner.hidden = true; // health shows an unreachable service; nothing to add here
    }
  };
  panel.addEventListener("show", () => void refresh());
  return refresh;
}
