// The text-to-image panel's input modes: text only, image to image, inpainting and instruction
// edits. Inpainting takes a mask drawn on a canvas over the chosen image (white strokes are
// repainted) or an uploaded mask file of the image's size. Which modes the loaded model has
// comes from GetModelInfo; the others stay listed but disabled, with the reason in their title.
import type { Clients } from "../connection";
import { field, h, numberInput, numberValue } from "../dom";

export type Mode = "generate" | "image" | "inpaint" | "edit";

export type Inputs = {
  mode: Mode;
  image?: Uint8Array;
  mask?: Uint8Array;
  strength?: number;
};

type Supported = { supportsImageToImage: boolean; supportsInpainting: boolean; supportsImageEditing: boolean };

const MODES: [Mode, string][] = [
  ["generate", "Text to image"],
  ["image", "Image to image"],
  ["inpaint", "Inpaint (mask)"],
  ["edit", "Instruction edit"],
];

export function imageInputs(clients: () => Clients) {
  const mode = h("select", { id: "t2i-mode" }, ...MODES.map(([value, text]) => h("option", { value, text })));
  const file = h("input", { id: "t2i-image", type: "file", accept: "image/*" });
  const maskFile = h("input", { id: "t2i-mask-file", type: "file", accept: "image/*" });
  const strength = numberInput("t2i-strength", "", { min: 0.05, max: 1, step: 0.05, placeholder: "default" });
  const brush = numberInput("t2i-brush", 12, { min: 1, step: 1 });
  const clear = h("button", { id: "t2i-mask-clear", text: "Clear mask" });
  // The visible canvas shows the image with translucent strokes; `mask` holds the real mask
  // (opaque white on black) at the image's own size.
  const canvas = h("canvas", { id: "t2i-mask-canvas", class: "mask-canvas", width: 256, height: 256 });
  const mask = document.createElement("canvas");
  const imageRow = h("div", { class: "row" }, field("Input image", file), field("Strength", strength));
  const maskRow = h(
    "div",
    { class: "row" },
    field("Mask file (optional)", maskFile),
    field("Brush", brush),
    clear,
  );
  const element = h("div", { id: "t2i-inputs" }, field("Mode", mode), imageRow, maskRow, canvas);
  let picture: HTMLImageElement | null = null;
  let imageBytes: Uint8Array | undefined;
  let drawn = false;

  const show = (): void => {
    const m = mode.value as Mode;
    imageRow.hidden = m === "generate";
    strength.disabled = m === "edit";
    maskRow.hidden = m !== "inpaint";
    canvas.hidden = m !== "inpaint" || picture === null;
    element.dataset.mode = m;
  };

  const paint = (): void => {
    const ctx = canvas.getContext("2d");
    if (!ctx || !picture) return;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 0.5;
    ctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  };

  const resetMask = (): void => {
    const ctx = mask.getContext("2d");
    if (!ctx) return;
    ctx.fillStyle = "black";
    ctx.fillRect(0, 0, mask.width, mask.height);
    drawn = false;
    element.dataset.maskDrawn = "false";
    paint();
  };

  file.onchange = async () => {
    const chosen = file.files?.[0];
    if (!chosen) return;
    imageBytes = new Uint8Array(await chosen.arrayBuffer());
    const url = URL.createObjectURL(chosen);
    const img = new Image();
    await new Promise<void>((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("the chosen file is not an image the browser can show"));
      img.src = url;
    });
    picture = img;
    mask.width = img.naturalWidth;
    mask.height = img.naturalHeight;
    // The canvas keeps the image's aspect ratio at a longest side of 256 CSS pixels.
    const scale = 256 / Math.max(img.naturalWidth, img.naturalHeight);
    canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
    resetMask();
    show();
  };

  let drawing = false;
  const stroke = (event: PointerEvent): void => {
    const ctx = mask.getContext("2d");
    if (!drawing || !ctx) return;
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * mask.width;
    const y = ((event.clientY - box.top) / box.height) * mask.height;
    const radius = ((numberValue(brush) ?? 12) / box.width) * mask.width;
    ctx.fillStyle = "white";
    ctx.beginPath();
    ctx.arc(x, y, Math.max(0.5, radius), 0, 2 * Math.PI);
    ctx.fill();
    drawn = true;
    element.dataset.maskDrawn = "true";
    paint();
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    stroke(event);
  });
  canvas.addEventListener("pointermove", stroke);
  canvas.addEventListener("pointerup", () => (drawing = false));
  clear.onclick = () => resetMask();
  mode.onchange = show;
  show();

  const refresh = async (): Promise<void> => {
    try {
      const info = await clients().t2i.getModelInfo({});
      const limits: Supported | undefined = info.limits;
      const allowed: Record<Mode, boolean> = {
        generate: true,
        image: limits?.supportsImageToImage ?? true,
        inpaint: limits?.supportsInpainting ?? true,
        edit: limits?.supportsImageEditing ?? true,
      };
      for (const option of Array.from(mode.options)) {
        const ok = allowed[option.value as Mode];
        option.disabled = !ok;
        option.title = ok ? "" : "the loaded model has no pipeline for this (GetModelInfo)";
      }
      if (!allowed[mode.value as Mode]) mode.value = "generate";
      show();
    } catch {
      // The model notice and the run itself report an unreachable service.
    }
  };

  const maskBytes = async (): Promise<Uint8Array> => {
    const uploaded = maskFile.files?.[0];
    if (uploaded) return new Uint8Array(await uploaded.arrayBuffer());
    if (!drawn) throw new Error("draw the area to repaint on the image, or choose a mask file");
    const blob = await new Promise<Blob | null>((resolve) => mask.toBlob(resolve, "image/png"));
    if (!blob) throw new Error("the drawn mask could not be encoded");
    return new Uint8Array(await blob.arrayBuffer());
  };

  const values = async (): Promise<Inputs> => {
    const m = mode.value as Mode;
    if (m === "generate") return { mode: m };
    if (!imageBytes) throw new Error("choose an input image first");
    const chosen: Inputs = { mode: m, image: imageBytes, strength: m === "edit" ? undefined : numberValue(strength) };
    if (m === "inpaint") chosen.mask = await maskBytes();
    return chosen;
  };

  return { element, refresh, values };
}
