// Vision-language chat: upload images, ask, and watch the answer stream in; the conversation is
// kept and sent whole each turn.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Role } from "../gen/mmserve/common/v1/chat_pb";
import type { ChatMessageSchema } from "../gen/mmserve/vl/v1/vl_pb";
import type { Clients } from "../connection";
import { describeError, isCancel } from "../connection";
import { field, h, numberInput, numberValue, setState } from "../dom";
import { JobRun, queueText, seconds } from "../jobs";
import { fileBytes } from "../media";

type ChatMessage = MessageInitShape<typeof ChatMessageSchema>;

export function vlPanel(clients: () => Clients): HTMLElement {
  const log = h("div", { id: "vl-log", class: "chat" });
  const files = h("input", { id: "vl-images", type: "file", accept: "image/*", multiple: true });
  const thumbs = h("div", { class: "thumbs" });
  const prompt = h("textarea", { id: "vl-prompt", rows: 2 }, "What is in this picture?");
  const maxTokens = numberInput("vl-max-tokens", 32, { min: 1 });
  const send = h("button", { id: "vl-send", class: "primary", text: "Send" });
  const stop = h("button", { id: "vl-stop", text: "Stop", disabled: true });
  const clear = h("button", { id: "vl-clear", text: "New chat" });
  const status = h("div", { id: "vl-status", class: "status" });
  const panel = h(
    "section",
    { id: "panel-vl", class: "panel", "data-state": "idle" },
    h("h2", { text: "Vision-language chat" }),
    log,
    h("div", { class: "row" }, field("Images", files), thumbs),
    field("Message", prompt),
    h("div", { class: "row" }, field("Max new tokens", maxTokens), send, stop, clear),
    status,
  );

  const history: ChatMessage[] = [];
  files.onchange = () => {
    thumbs.replaceChildren(
      ...[...(files.files ?? [])].map((f) => h("img", { src: URL.createObjectURL(f), alt: f.name })),
    );
  };
  clear.onclick = () => {
    history.length = 0;
    log.replaceChildren();
  };

  let current: JobRun | null = null;
  stop.onclick = () => void current?.stop();
  send.onclick = async () => {
    const client = clients().vl;
    current = new JobRun(client);
    const job = current;
    const images = await Promise.all([...(files.files ?? [])].map(fileBytes));
    const user: ChatMessage = {
      role: Role.USER,
      content: [
        ...images.map((data) => ({ part: { case: "image" as const, value: { source: { case: "data" as const, value: data } } } })),
        { part: { case: "text", value: prompt.value } },
      ],
    };
    const userView = h("div", { class: "msg user" }, h("div", { text: prompt.value }));
    for (const f of files.files ?? []) userView.append(h("img", { src: URL.createObjectURL(f), alt: f.name }));
    const answer = h("div", { class: "msg assistant" });
    log.append(userView, answer);
    send.disabled = true;
    stop.disabled = false;
    setState(panel, "running");
    status.textContent = "sending…";
    let text = "";
    try {
      const stream = client.streamChat(
        { messages: [...history, user], sampling: { maxNewTokens: numberValue(maxTokens) } },
        { signal: job.signal },
      );
      for await (const event of stream) {
        const e = event.event;
        if (e.case === "accepted") {
          job.jobId = e.value.jobId;
          status.textContent = queueText(e.value.queue);
        } else if (e.case === "queue") {
          status.textContent = queueText(e.value);
        } else if (e.case === "delta") {
          text += e.value.text;
          answer.textContent = text;
          status.textContent = `${e.value.outputTokens} tokens`;
        } else if (e.case === "completed") {
          const usage = e.value.usage;
          status.textContent =
            `done (${["", "stop", "length", "cancelled"][e.value.finishReason] ?? "?"}): ` +
            `${usage?.outputTokens ?? 0} tokens in ${seconds(usage?.runSeconds ?? 0)}`;
          history.push(user, { role: Role.ASSISTANT, content: [{ part: { case: "text", value: text } }] });
          files.value = "";
          thumbs.replaceChildren();
          setState(panel, "done");
        }
      }
    } catch (error) {
      status.textContent = isCancel(error) ? "cancelled" : describeError(error);
      setState(panel, "error");
    } finally {
      send.disabled = false;
      stop.disabled = true;
    }
  };
  return panel;
}
