// Vision: image/text similarity as a matrix, zero-shot classification with bars, and a
// collection that the chosen images are added to and searched by text.
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
  const collection = h("input", { id: "vision-collection", value: "playground", size: 20, list: "vision-collections" });
  const known = h("datalist", { id: "vision-collections" });
  const add = h("button", { id: "vision-add", text: "Add images" });
  const query = h("input", { id: "vision-query", value: "a red square", size: 30 });
  const search = h("button", { id: "vision-search", class: "primary", text: "Search" });
  const hits = h("ol", { id: "vision-hits", class: "hits" });
  // Images added from this page, shown beside their hits (a collection stores vectors only).
  const thumbnails = new Map<string, string>();
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
    h("h3", { text: "Collection search" }),
    h("div", { class: "row" }, field("Collection", collection), known, add),
    h("div", { class: "row" }, field("Search text", query), search),
    hits,
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
  const refreshCollections = async () => {
    try {
      const reply = await clients().vision.listCollections({});
      known.replaceChildren(...reply.collections.map((c) => h("option", { value: c.name, text: `${c.count} items` })));
    } catch {
      // the status line reports errors of the actions themselves
    }
  };
  panel.addEventListener("show", () => void refreshCollections());

  add.onclick = async () => {
    setState(panel, "running");
    status.textContent = "adding…";
    try {
      const picked = await images();
      if (picked.length === 0) throw new Error("choose images first");
      const name = collection.value.trim();
      await clients().vision.createCollection({ name, existOk: true });
      const reply = await clients().vision.upsertItems({
        collection: name,
        items: picked.map((p) => ({
          id: p.name,
          source: { case: "image" as const, value: { source: { case: "data" as const, value: p.data } } },
          metadata: { name: p.name },
        })),
      });
      for (const p of picked) {
        thumbnails.set(p.name, URL.createObjectURL(new Blob([p.data.slice()])));
      }
      status.textContent = `added ${reply.upserted} images to ${name} (${reply.replaced} replaced)`;
      await refreshCollections();
      setState(panel, "done");
    } catch (error) {
      status.textContent = describeError(error);
      setState(panel, "error");
    }
  };

  search.onclick = async () => {
    setState(panel, "running");
    status.textContent = "searching…";
    try {
      const reply = await clients().vision.search({
        collection: collection.value.trim(),
        query: { case: "text", value: query.value },
        topK: 5,
      });
      hits.replaceChildren(
        ...reply.hits.map((hit) => {
          const thumbnail = thumbnails.get(hit.id);
          return h(
            "li",
            { class: "hit" },
            thumbnail ? h("img", { src: thumbnail, alt: hit.id }) : null,
            h("span", { text: `${hit.id} ${hit.score.toFixed(3)}` }),
          );
        }),
      );
      status.textContent = `${reply.hits.length} hits${reply.exact ? " (exact scan)" : ""}`;
      setState(panel, "done");
    } catch (error) {
      status.textContent = describeError(error);
      setState(panel, "error");
    }
  };
  return panel;
}
