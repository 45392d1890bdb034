// The live part of the omni panel: a session from the microphone (and camera), its transcript
// and reply as they stream, the reply's speech played gaplessly, barge-in, pause, resume and
// close. Everything it shows is also on the section's data-* attributes, for tests and tools.
import { ConnectError } from "@connectrpc/connect";
import type { Clients } from "../connection";
import { describeError } from "../connection";
import { h, field, numberInput, numberValue } from "../dom";
import { FinishReason } from "../gen/mmserve/common/v1/chat_pb";
import { SessionMode, SessionState } from "../gen/mmserve/omni/v1/omni_pb";
import { seconds } from "../jobs";
import { CameraFrames } from "./camera";
import type { CaptureKind } from "./capture";
import { INPUT_RATE, LiveSession, type LiveView } from "./session";
import { closeOnUnload, onPageExit } from "./unload";

export const MODE_NAMES: Record<number, string> = {
  [SessionMode.CHAT]: "chat (turn by turn)",
  [SessionMode.HALF_DUPLEX]: "half duplex (voice activity ends a turn)",
  [SessionMode.AUDIO_DUPLEX]: "audio duplex (talk over the reply to interrupt)",
  [SessionMode.OMNI_DUPLEX]: "omni duplex (audio + camera)",
};
const STATE_NAMES: Record<number, string> = {
  [SessionState.LISTENING]: "listening",
  [SessionState.RESPONDING]: "responding",
  [SessionState.PAUSED]: "paused",
  [SessionState.CLOSED]: "closed",
};

/** Why the microphone cannot be used here, or "" when it can. */
export function micUnavailable(): string {
  if (!window.isSecureContext) {
    return (
      `This page (${location.origin}) is not a secure context, so the browser gives it no ` +
      "microphone or camera. Open the playground at http://localhost or http://127.0.0.1 on the " +
      "machine that runs the edge, or over HTTPS: `make cert`, then start the stack with " +
      "--tls-cert build/certs/edge.crt --tls-key build/certs/edge.key and open https://HOST:PORT/."
    );
  }
  if (!navigator.mediaDevices?.getUserMedia) return "This browser has no getUserMedia: no microphone.";
  if (!window.AudioContext) return "This browser has no Web Audio: no live sessions.";
  return "";
}

const secs = (value: number | undefined) => (value === undefined ? "–" : `${value.toFixed(2)} s`);

export interface LiveSection {
  element: HTMLElement;
  /** Fills the mode picker from GetModelInfo (modes, image input). */
  setModes(modes: SessionMode[], imageInput: boolean, holding: SessionMode[]): void;
  voice: HTMLSelectElement;
}

export function liveSection(clients: () => Clients): LiveSection {
  const params = new URLSearchParams(location.search);
  const mode = h("select", { id: "omni-live-mode" });
  const voice = h("select", { id: "omni-live-voice" }, h("option", { value: "", text: "default voice" }));
  const speech = h("input", { id: "omni-live-speech", type: "checkbox", checked: true });
  const maxTokens = numberInput("omni-live-max-tokens", 48, { min: 1 });
  const system = h("input", { id: "omni-live-system", size: 40, placeholder: "system prompt (optional)" });
  const start = h("button", { id: "omni-live-start", class: "primary", text: "● Start live session" });
  const pause = h("button", { id: "omni-live-pause", text: "Pause", disabled: true });
  const resume = h("button", { id: "omni-live-resume", text: "Resume", disabled: true });
  const endTurn = h("button", { id: "omni-live-end-turn", text: "End my turn", disabled: true });
  const close = h("button", { id: "omni-live-close", text: "■ Close", disabled: true });
  const camera = h("button", { id: "omni-live-camera", text: "Camera on", disabled: true });
  const level = h("meter", { id: "omni-live-level", min: 0, max: 0.3, value: 0 });
  const text = h("input", { id: "omni-live-text", size: 40, placeholder: "type a turn (chat mode)", disabled: true });
  const sendText = h("button", { id: "omni-live-send", text: "Send turn", disabled: true });
  const textRow = h("div", { class: "row" }, text, sendText);
  const warning = h("div", { id: "omni-live-warning", class: "warning", hidden: true });
  const hint = h("div", { id: "omni-live-hint", class: "muted" });
  const log = h("div", { id: "omni-live-log", class: "chat" });
  const status = h("div", { id: "omni-live-status", class: "status" });
  const stats = h("div", { id: "omni-live-stats", class: "status muted" });
  const video = h("video", { id: "omni-live-video", class: "camera", playsinline: true, hidden: true });
  const element = h(
    "section",
    { id: "omni-live", class: "live", "data-state": "idle" },
    h("h3", { text: "Live conversation" }),
    warning,
    hint,
    h(
      "div",
      { class: "row" },
      field("Mode", mode),
      field("Voice", voice),
      field("Speak", speech),
      field("Max new tokens", maxTokens),
      field("System prompt", system),
    ),
    h("div", { class: "row" }, start, pause, resume, endTurn, close, camera, field("Mic level", level)),
    textRow,
    log,
    status,
    stats,
    video,
  );

  const unavailable = micUnavailable();
  if (unavailable) {
    warning.textContent = unavailable;
    warning.hidden = false;
    element.dataset.micUnavailable = "true";
  }

  let session: LiveSession | null = null;
  let frames: CameraFrames | null = null;
  let imageInput = false;
  let ticker: number | undefined;
  let forgetExit: (() => void) | null = null;
  const bubbles = new Map<string, HTMLElement>();

  const bubble = (turn: number, who: "user" | "assistant"): HTMLElement => {
    const key = `${turn}:${who}`;
    let found = bubbles.get(key);
    if (!found) {
      found = h("div", { class: `msg ${who}`, "data-turn": turn });
      if (who === "assistant") {
        const heard = bubbles.get(`${turn}:user`);
        if (heard) heard.after(found);
        else log.append(found);
      } else {
        log.append(found);
      }
      bubbles.set(key, found);
      log.scrollTop = log.scrollHeight;
    }
    return found;
  };

  const selectedMode = (): SessionMode => Number(mode.value) as SessionMode;

  const setButtons = () => {
    const live = !!session && !session.closed;
    const paused = live && session!.state === SessionState.PAUSED;
    start.disabled = live || !!unavailable || mode.options.length === 0;
    pause.disabled = !live || paused;
    resume.disabled = !paused;
    close.disabled = !live;
    endTurn.disabled = !live || paused;
    const chat = live && session!.options.mode === SessionMode.CHAT;
    text.disabled = sendText.disabled = !chat || paused;
    camera.disabled = !live || !(imageInput && selectedMode() === SessionMode.OMNI_DUPLEX);
    camera.textContent = frames?.running ? "Camera off" : "Camera on";
    mode.disabled = voice.disabled = speech.disabled = live;
  };

  const publish = () => {
    const d = element.dataset;
    if (!session) return;
    const p = session.player.stats;
    d.sessionId = session.sessionId;
    d.transcripts = String(session.counts.transcripts);
    d.deltas = String(session.counts.deltas);
    d.audioChunks = String(session.counts.audio);
    d.audioBuffers = String(p.scheduled);
    d.audioSeconds = p.scheduledSeconds.toFixed(2);
    d.playedSeconds = p.playedSeconds.toFixed(2);
    d.flushes = String(p.flushes);
    d.bargeIns = String(session.counts.bargeIns);
    d.turns = String(session.counts.turns);
    d.pushed = String(session.pushed);
    d.capture = session.captureKind;
    d.micRate = String(session.micRate);
    d.outputState = session.player.state;
    d.frames = String(frames?.sent ?? 0);
    d.reconnects = String(session.counts.reconnects);
    level.value = session.level;
    const capture = session.captureKind
      ? `mic ${session.micRate} Hz → ${INPUT_RATE} Hz (${session.captureKind}), ${session.pushed} chunks pushed; `
      : "";
    const lat = session.latency;
    for (const part of ["transcript", "text", "audio"] as const) {
      if (lat[part] !== undefined) d[`${part}Latency`] = lat[part]!.toFixed(2);
    }
    const latency =
      lat.audio !== undefined || lat.text !== undefined
        ? `; after you stopped talking: transcript ${secs(lat.transcript)}, text ${secs(lat.text)}` +
          `, speech ${secs(lat.audio)}`
        : "";
    stats.textContent =
      capture +
      `speech: ${p.scheduled} buffers, ${seconds(p.scheduledSeconds)} received, ${seconds(p.playedSeconds)} played` +
      (p.underruns ? `, ${p.underruns} gaps` : "") +
      (session.counts.bargeIns ? `; interrupted ${session.counts.bargeIns}×` : "") +
      latency;
  };

  const setLiveState = (state: string, reason = "") => {
    element.dataset.state = state;
    element.dataset.reason = reason;
    status.textContent = reason ? `${state}: ${reason}` : state;
    setButtons();
  };

  const finish = () => {
    window.clearInterval(ticker);
    frames?.stop();
    frames = null;
    video.hidden = true;
    forgetExit?.();
    forgetExit = null;
    publish();
    setButtons();
  };

  const view: LiveView = {
    state(state, reason) {
      setLiveState(STATE_NAMES[state] ?? "unknown", reason);
      if (state === SessionState.CLOSED) finish();
    },
    transcript(turn, heard, final) {
      const b = bubble(turn, "user");
      b.textContent = heard;
      b.classList.toggle("partial", !final);
    },
    delta(turn, piece) {
      bubble(turn, "assistant").textContent += piece;
    },
    turnDone(turn, finishReason) {
      element.dataset.lastFinish = FinishReason[finishReason] ?? String(finishReason);
      if (finishReason === FinishReason.CANCELLED) bubble(turn, "assistant").classList.add("interrupted");
    },
    queue(line) {
      status.textContent = line;
    },
    bargeIn(turn, cut) {
      element.dataset.lastCut = cut.toFixed(2);
      bubble(turn, "assistant").classList.add("interrupted");
    },
    problem(line) {
      status.textContent = line;
      element.dataset.problem = line;
    },
    changed: publish,
  };

  start.onclick = async () => {
    if (session && !session.closed) return;
    log.replaceChildren();
    bubbles.clear();
    for (const key of Object.keys(element.dataset)) if (key !== "micUnavailable") delete element.dataset[key];
    setLiveState("opening");
    const capture = params.get("capture") === "script" ? ("script" as CaptureKind) : undefined;
    session = new LiveSession(
      clients().omni,
      {
        mode: selectedMode(),
        speech: speech.checked,
        voice: voice.value,
        maxNewTokens: numberValue(maxTokens),
        systemPrompt: system.value,
        capture,
      },
      view,
    );
    const current = session;
    try {
      await current.start();
    } catch (error) {
      // A refused call names its gRPC status; a microphone refusal is a DOMException.
      setLiveState("error", error instanceof ConnectError ? describeError(error) : `microphone: ${error}`);
      if (current.sessionId) await current.close().catch(() => undefined);
      session = null;
      setButtons();
      return;
    }
    forgetExit = onPageExit(() => {
      if (!current.closed) closeOnUnload(current.sessionId);
    });
    ticker = window.setInterval(publish, 250);
    if (element.dataset.state === "opening") setLiveState("waiting", "session opened");
    // Where the server has an orphan timeout, a session whose page vanished without closing
    // it (a crash, a lost network) is released after it.
    if (current.orphanTimeout) {
      const after = seconds(current.orphanTimeout);
      element.title = `Leaving this page closes the session; a page that vanishes releases it after ${after}.`;
    }
    publish();
  };

  pause.onclick = async () => {
    try {
      await session?.pause();
      setLiveState("paused", `paused (released after ${seconds(session?.pauseTimeout ?? 0)})`);
    } catch (error) {
      status.textContent = describeError(error);
    }
  };
  resume.onclick = async () => {
    try {
      await session?.resume();
      setLiveState(STATE_NAMES[session?.state ?? 0] ?? "listening", "resumed");
    } catch (error) {
      status.textContent = describeError(error);
    }
  };
  close.onclick = async () => {
    const current = session;
    if (!current) return;
    close.disabled = true;
    try {
      const turns = await current.close();
      status.textContent = `closed after ${turns} turn(s)`;
    } catch (error) {
      status.textContent = describeError(error);
    }
  };
  endTurn.onclick = () => session?.endTurn();
  sendText.onclick = () => {
    if (!text.value.trim() || !session) return;
    bubble(session.turn, "user").textContent = text.value;
    session.sendText(text.value);
    text.value = "";
  };
  camera.onclick = async () => {
    if (!session) return;
    if (frames?.running) {
      frames.stop();
      frames = null;
      video.hidden = true;
    } else {
      const live = session;
      frames = new CameraFrames(video, (jpeg) => live.sendFrame(jpeg));
      try {
        await frames.start();
        video.hidden = false;
      } catch (error) {
        status.textContent = `camera: ${error}`;
        frames = null;
      }
    }
    setButtons();
  };
  const HINTS: Record<number, string> = {
    [SessionMode.CHAT]: "Type a turn and send it; the reply is written and spoken.",
    [SessionMode.HALF_DUPLEX]: "Talk; a short silence ends your turn. The model does not listen while it answers.",
    [SessionMode.AUDIO_DUPLEX]:
      "Talk; a short silence ends your turn. Talk over the reply to interrupt it " +
      "(use headphones, or rely on echo cancellation).",
    [SessionMode.OMNI_DUPLEX]: "As audio duplex; turn the camera on and the latest frame goes with your turn.",
  };
  const showHint = () => {
    hint.textContent = HINTS[selectedMode()] ?? "";
    textRow.hidden = selectedMode() !== SessionMode.CHAT;
  };
  mode.onchange = () => {
    showHint();
    setButtons();
  };
  // A page restored from the back/forward cache had its session closed on the way out.
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && session && !session.closed) {
      session.closed = true;
      setLiveState("closed", "closed when the page was left");
      finish();
    }
  });

  return {
    element,
    voice,
    setModes(modes, images, holding) {
      imageInput = images;
      // Modes that keep the device for the whole session block every other caller meanwhile.
      const label = (m: SessionMode) =>
        (MODE_NAMES[m] ?? `mode ${m}`) + (holding.includes(m) ? ", holds the device" : "");
      mode.replaceChildren(...modes.map((m) => h("option", { value: m, text: label(m) })));
      if (modes.includes(SessionMode.HALF_DUPLEX)) mode.value = String(SessionMode.HALF_DUPLEX);
      showHint();
      setButtons();
    },
  };
}
