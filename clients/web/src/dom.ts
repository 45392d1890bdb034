// A few DOM helpers, so the panels read as what they show.

type Attrs = Record<string, string | number | boolean | undefined>;
type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (name === "text") element.textContent = String(value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child) element.append(child);
  }
  return element;
}

/** A labelled control. */
export function field(label: string, control: HTMLElement): HTMLLabelElement {
  return h("label", { class: "field" }, h("span", { text: label }), control);
}

export function numberInput(id: string, value: number | "", attrs: Attrs = {}): HTMLInputElement {
  return h("input", { id, type: "number", value, ...attrs });
}

/** The value of a number input, or undefined when empty (the server then uses its default). */
export function numberValue(input: HTMLInputElement): number | undefined {
  return input.value.trim() === "" ? undefined : Number(input.value);
}

/** Panels expose their state to people (the status line) and to tests (data-state). */
export function setState(panel: HTMLElement, state: "idle" | "running" | "done" | "error"): void {
  panel.dataset.state = state;
}
