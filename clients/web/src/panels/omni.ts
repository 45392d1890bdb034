// Omni chat: type or speak (microphone), and get streamed text with speech played as it comes;
// below it a live session (microphone and camera in, speech out) and the reference voices.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Role } from "../gen/mmserve/common/v1/chat_pb";
import type { ChatMessageSchema, ContentPartSchema } from "../gen/mmserve/omni/v1/omni_pb";
import type { Clients } from "../connection";
import { describeError, isCancel } from "../connection";
import { field, h, numberInput, numberValue, setState } from "../dom";
import { JobRun, queueText, seconds } from "../jobs";
import { liveSection } from "../live/panel";
import { voiceSection } from "../live/voices";
import { MicRecorder, SpeechPlayer, WAV } from "../media";

type ChatMessage = MessageInitShape<typeof ChatMessageSchema>;
type ContentPart = MessageInitShape<typeof ContentPartSchema>;

export function omniPanel(clients: () => Clients): HTMLElement {
  const log = h("div", { id: "omni-log", class: "chat" });
  const prompt = h("textarea", { id: "omni-prompt", rows: 2 }, "Say hello in one short sentence.");
  const speech = h("input", { id: "omni-speech", type: "checkbox", checked: true });
  const voice = h("select", { id: "omni-voice" }, h("option", { value: "", text: "default voice" }));
  const maxTokens = numberInput("omni-max-tokens", 24, { min: 1 });
  const record = h("button", { id: "omni-record", text: "● Record" });
  const recorded = h("span", { id: "omni-recorded", class: "muted" });
  const send = h("button", { id: "omni-send", class: "primary", text: "Send" });
  const stop = h("button", { id: "omni-stop", text: "Stop", disabled: true });
  const status = h("div", { id: "omni-status", class: "status" });
  const player = h("audio", { id: "omni-audio", controls: true });
  const live = liveSection(clients);
  const voices = voiceSection(clients, [voice, live.voice]);
  const panel = h(
    "section",
    { id: "panel-omni", class: "panel", "data-state": "idle" },
    h("h2", { text: "Omni chat" }),
    log,
    field("Message", prompt),
    h("div", { class: "row" }, record, recorded),
    h(
      "div",
      { class: "row" },
      field("Speak the answer", speech),
      field("Voice", voice),
      field("Max new tokens", maxTokens),
      send,
      stop,
    ),
    status,
    player,
    live.element,
    voices.element,
  );

  const history: ChatMessage[] = [];
  const mic = new MicRecorder();
  let clip: Uint8Array | null = null;

  // The model's modes and voices are read once the panel is first shown (the edge may not be up
  // at page load); a failure is retried the next time it is shown.
  let described = false;
  panel.addEventListener("show", async () => {
    if (described) return;
    try {
      const info = await clients().omni.getModelInfo({});
      live.setModes(info.sessionModes, info.supportsImageInput, info.deviceHoldingSessionModes);
      voices.setCloning(info.modelInfo?.capabilities.includes("voice_cloning") ?? false);
      await voices.refresh();
      described = true;
      panel.dataset.described = "true";
    } catch (error) {
      live.element.dataset.problem = describeError(error);
    }
  });

  record.onclick = async () => {
    try {
      if (!mic.recording) {
        await mic.start();
        record.textContent = "■ Stop recording";
        recorded.textContent = "recording…";
        return;
      }
      const result = await mic.stop();
      clip = result.wav;
      record.textContent = "● Record";
      recorded.textContent = `${seconds(result.seconds)} of audio will be sent`;
      panel.dataset.recorded = result.seconds.toFixed(2);
    } catch (error) {
      recorded.textContent = `microphone: ${error}`;
    }
  };

  let current: JobRun | null = null;
  stop.onclick = () => void current?.stop();
  send.onclick = async () => {
    const client = clients().omni;
    current = new JobRun(client);
    const job = current;
    const content: ContentPart[] = [];
    if (clip) content.push({ part: { case: "audio", value: { source: { case: "data", value: clip }, format: WAV } } });
    if (prompt.value.trim()) content.push({ part: { case: "text", value: prompt.value } });
    const user: ChatMessage = { role: Role.USER, content };
    log.append(h("div", { class: "msg user", text: (clip ? "[voice] " : "") + prompt.value }));
    const answer = h("div", { class: "msg assistant" });
    log.append(answer);
    clip = null;
    recorded.textContent = "";
    const speaker = new SpeechPlayer();
    send.disabled = true;
    stop.disabled = false;
    setState(panel, "running");
    status.textContent = "sending…";
    let text = "";
    try {
      const stream = client.streamChat(
        {
          messages: [...history, user],
          sampling: { maxNewTokens: numberValue(maxTokens) },
          speech: { enabled: speech.checked, voice: voice.value },
        },
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
        } else if (e.case === "audio") {
          if (e.value.audio) speaker.push(e.value.audio);
          status.textContent = `speaking: ${seconds(speaker.seconds)}`;
        } else if (e.case === "completed") {
          status.textContent =
            `done: ${e.value.usage?.outputTokens ?? 0} tokens` +
            (speaker.seconds ? `, ${seconds(speaker.seconds)} of speech` : "");
          panel.dataset.speechSeconds = speaker.seconds.toFixed(2);
          if (speaker.seconds) player.src = speaker.wavUrl();
          history.push(
            { role: Role.USER, content: content.filter((p) => p.part?.case === "text") },
            { role: Role.ASSISTANT, content: [{ part: { case: "text", value: text } }] },
          );
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
