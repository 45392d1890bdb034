// Vision: image/text similarity as a matrix, and zero-shot classification with bars.
import type { Clients } from "../connection";
import { describeError } from "../connection";
import { field, h, setState } from "../dom";
import { fileBytes } from "../media";

function lines(text: string): string[] {
  return text.split("\n").map((l) => l.trim()).filter(Boolean);
}

export function visionPanel(clients: () => Clients): HTMLElement {
  const files = h("input", { id: "vision-images", type: "file", accept: "image/*", multiple: true });
  const texts = h("textarea", { id: "vision-texts", rows: 3 }, "a photo of a cat\na red square\na city at night");
  const labels = h("input", { id: "vision-labels", value: "cat, dog, car, red square", size: 40 });
  const similarity = h("button", { id: "vision-similarity", class: "primary", text: "Similarity" });
  const classify = h("button", { id: "vision-classify", class: "primary", text: "Zero-shot" });
  const status = h("div", { id: "vision-status", class: "status" });
  const matrix = h("table", { id: "vision-matrix", class: "matrix" });
  const classes = h("div", { id: "vision-classes" });
  const panel = h(
    "section",
    { id: "panel-vision", class: "panel", "data-state": "idle" },
    h("h2", { text: "Vision: similarity and zero-shot" }),
    field("Images", files),
    field("Texts (one per line)", texts),
    h("div", { class: "row" }, similarity),
    matrix,
    field("Labels (comma-separated)", labels),
    h("div", { class: "row" }, classify),
    classes,
    status,
  );

  const images = async () =>
    Promise.all([...(files.files ?? [])].map(async (f) => ({ name: f.name, data: await fileBytes(f) })));

  similarity.onclick = async () => {
    setState(panel, "running");
    status.textContent = "scoring…";
    try {
      const picked = await images();
      const queries = picked.map((p) => ({ input: { case: "image" as const, value: { source: { case: "data" as const, value: p.data } } } }));
      const candidates = lines(texts.value).map((t) => ({ input: { case: "text" as const, value: t } }));
      const reply = await clients().vision.computeSimilarity({ queries, candidates });
      const scores = reply.scores!;
      const header = h("tr", {}, h("th"), ...lines(texts.value).map((t) => h("th", { text: t })));
      const rows = picked.map((p, i) =>
        h(
          "tr",
          {},
          h("th", { text: p.name }),
          ...Array.from({ length: scores.columns }, (_, j) => {
            const value = scores.values[i * scores.columns + j];
            return h("td", { text: value.toFixed(3), style: `--v:${(value + 1) / 2}` });
          }),
        ),
      );
      matrix.replaceChildren(header, ...rows);
      status.textContent = `${scores.rows}×${scores.columns} cosine scores`;
      setState(panel, "done");
    } catch (error) {
      status.textContent = describeError(error);
      setState(panel, "error");
    }
  };

  classify.onclick = async () => {
    setState(panel, "running");
    status.textContent = "classifying…";
    try {
      const picked = await images();
      const reply = await clients().vision.classifyZeroShot({
        images: picked.map((p) => ({ source: { case: "data", value: p.data } })),
        labels: labels.value.split(",").map((l) => l.trim()).filter(Boolean),
      });
      classes.replaceChildren(
        ...reply.classifications.map((c, i) =>
          h(
            "div",
            { class: "classes" },
            h("strong", { text: picked[i].name }),
            ...c.labels.map((l) =>
              h("div", { class: "bar", style: `--v:${l.score}` }, h("span", { text: `${l.label} ${(l.score * 100).toFixed(1)}%` })),
            ),
          ),
        ),
      );
      status.textContent = `${reply.activation} over ${reply.classifications[0]?.labels.length ?? 0} labels`;
      setState(panel, "done");
    } catch (error) {
      status.textContent = describeError(error);
      setState(panel, "error");
    }
  };
  return panel;
}
