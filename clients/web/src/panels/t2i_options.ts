// The text-to-image panel's generation options beyond size and steps: negative prompt,
// guidance, scheduler and LoRA adapters. The scheduler list and the adapters come from
// GetModelInfo, read each time the panel is shown (a restarted service may offer others).
import type { Clients } from "../connection";
import { field, h, numberInput, numberValue } from "../dom";

type AdapterChoice = { name: string; weight: number };
type Described = { scheduler: string; schedulers: string[]; adapters: string[] };

export type GenerationOptions = {
  negativePrompt: string;
  guidanceScale?: number;
  scheduler: string;
  adapters: AdapterChoice[];
};

export function generationOptions(clients: () => Clients) {
  const negative = h("input", { id: "t2i-negative", type: "text", placeholder: "what to avoid" });
  const guidance = numberInput("t2i-guidance", "", { min: 0, step: 0.5, placeholder: "model default" });
  const scheduler = h("select", { id: "t2i-scheduler" }, h("option", { value: "", text: "model default" }));
  const adapters = h("div", { id: "t2i-adapters", class: "row" });
  const element = h(
    "div",
    {},
    h("div", { class: "row" }, field("Negative prompt", negative), field("Guidance", guidance), field("Scheduler", scheduler)),
    adapters,
  );
  const weights = new Map<string, { use: HTMLInputElement; weight: HTMLInputElement }>();

  const describe = (info: Described): void => {
    const chosen = scheduler.value;
    scheduler.replaceChildren(
      h("option", { value: "", text: info.scheduler ? `model default (${info.scheduler})` : "model default" }),
      ...info.schedulers.map((name) => h("option", { value: name, text: name })),
    );
    scheduler.value = info.schedulers.includes(chosen) ? chosen : "";
    weights.clear();
    adapters.replaceChildren(
      ...info.adapters.map((name) => {
        const use = h("input", { type: "checkbox", id: `t2i-adapter-${name}`, "data-adapter": name });
        const weight = numberInput(`t2i-adapter-${name}-weight`, 1, { step: 0.05 });
        weights.set(name, { use, weight });
        return field(`LoRA ${name}`, h("span", {}, use, weight));
      }),
    );
    adapters.hidden = info.adapters.length === 0;
  };

  const refresh = async (): Promise<void> => {
    try {
      describe(await clients().t2i.getModelInfo({}));
    } catch {
      // The model notice and the run itself report an unreachable service.
    }
  };

  const values = (): GenerationOptions => ({
    negativePrompt: negative.value,
    guidanceScale: numberValue(guidance),
    scheduler: scheduler.value,
    adapters: [...weights.entries()]
      .filter(([, control]) => control.use.checked)
      .map(([name, control]) => ({ name, weight: numberValue(control.weight) ?? 1 })),
  });

  return { element, refresh, values };
}
