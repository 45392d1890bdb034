// Text to image: live queue position, step progress with previews, then the images.
import type { Clients } from "../connection";
import { describeError, isCancel } from "../connection";
import { field, h, numberInput, numberValue, setState } from "../dom";
import { JobRun, progressText, queueText, seconds } from "../jobs";
import { imageElement } from "../media";
import { imageInputs } from "./t2i_inputs";
import { generationOptions } from "./t2i_options";

export function t2iPanel(clients: () => Clients): HTMLElement {
  const prompt = h("textarea", { id: "t2i-prompt", rows: 2 }, "a red fox in the snow, watercolor");
  const steps = numberInput("t2i-steps", 8, { min: 1 });
  const width = numberInput("t2i-width", "", { min: 8, step: 8, placeholder: "model default" });
  const height = numberInput("t2i-height", "", { min: 8, step: 8, placeholder: "model default" });
  const seed = numberInput("t2i-seed", "", { min: 0, placeholder: "random" });
  const previewEvery = numberInput("t2i-preview-every", 1, { min: 0 });
  const options = generationOptions(clients);
  const inputs = imageInputs(clients);
  const run = h("button", { id: "t2i-run", class: "primary", text: "Generate" });
  const stop = h("button", { id: "t2i-stop", text: "Stop", disabled: true });
  const status = h("div", { id: "t2i-status", class: "status" });
  const bar = h("progress", { id: "t2i-progress", max: 1, value: 0 });
  const preview = h("div", { id: "t2i-preview", class: "preview" });
  const images = h("div", { id: "t2i-images", class: "gallery" });
  const panel = h(
    "section",
    { id: "panel-t2i", class: "panel", "data-state": "idle" },
    h("h2", { text: "Text to image" }),
    inputs.element,
    field("Prompt (an instruction for edits)", prompt),
    h(
      "div",
      { class: "row" },
      field("Steps", steps),
      field("Width", width),
      field("Height", height),
      field("Seed", seed),
      field("Preview every", previewEvery),
    ),
    options.element,
    h("div", { class: "row" }, run, stop),
    bar,
    status,
    h("div", { class: "row" }, preview, images),
  );

  panel.addEventListener("show", () => void options.refresh());
  panel.addEventListener("show", () => void inputs.refresh());

  let current: JobRun | null = null;
  stop.onclick = () => void current?.stop();
  run.onclick = async () => {
    const client = clients().t2i;
    current = new JobRun(client);
    const job = current;
    run.disabled = true;
    stop.disabled = false;
    images.replaceChildren();
    preview.replaceChildren();
    bar.value = 0;
    setState(panel, "running");
    status.textContent = "sending…";
    const s = numberValue(seed);
    try {
      const request = {
        params: {
          prompt: prompt.value,
          numInferenceSteps: numberValue(steps),
          width: numberValue(width),
          height: numberValue(height),
          seed: s === undefined ? undefined : BigInt(s),
          ...options.values(),
        },
        preview: { everyNSteps: numberValue(previewEvery) ?? 0, maxSide: 128 },
      };
      const input = await inputs.values();
      const bytes = (data?: Uint8Array) => ({ source: { case: "data" as const, value: data ?? new Uint8Array() } });
      const image = bytes(input.image);
      const call = { signal: job.signal };
      const stream =
        input.mode === "inpaint"
          ? client.streamInpaintImage({ ...request, image, mask: bytes(input.mask), strength: input.strength }, call)
          : input.mode === "edit"
            ? client.streamEditImage({ ...request, image }, call)
            : input.mode === "image"
              ? client.streamImageToImage({ ...request, image, strength: input.strength }, call)
              : client.streamTextToImage(request, call);
      for await (const event of stream) {
        const e = event.event;
        switch (e.case) {
          case "accepted":
            job.jobId = e.value.jobId;
            panel.dataset.jobId = job.jobId;
            status.textContent = queueText(e.value.queue);
            break;
          case "queue":
            status.textContent = queueText(e.value);
            break;
          case "step": {
            const p = e.value.progress;
            bar.max = p?.totalSteps || 1;
            bar.value = p?.step ?? 0;
            status.textContent = progressText(p);
            if (e.value.preview) {
              preview.replaceChildren(imageElement(e.value.preview, `preview ${p?.step}`));
              panel.dataset.previews = String(Number(panel.dataset.previews ?? 0) + 1);
            }
            break;
          }
          case "result":
            for (const [i, image] of e.value.images.entries()) {
              images.append(imageElement(image, `image ${i}`));
            }
            status.textContent =
              `done: seed ${e.value.seed}, ${e.value.steps} steps, ` +
              `${seconds(e.value.usage?.runSeconds ?? 0)} on the device`;
            setState(panel, "done");
            break;
        }
      }
    } catch (error) {
      status.textContent = isCancel(error) ? "cancelled" : describeError(error);
      setState(panel, "error");
    } finally {
      run.disabled = false;
      stop.disabled = true;
    }
  };
  return panel;
}
