// Reference voices from the browser: a sample from a file or recorded with the microphone,
// registered with RegisterVoice; registered voices listed with a delete button. Only models
// that clone voices can speak with one (GetModelInfo lists "voice_cloning"); the others keep
// it registered but refuse it where it would be used, which the page says up front.
import type { Clients } from "../connection";
import { describeError } from "../connection";
import { field, h } from "../dom";
import { AudioFormat } from "../gen/mmserve/common/v1/media_pb";
import type { Voice } from "../gen/mmserve/omni/v1/omni_pb";
import { seconds } from "../jobs";
import { fileBytes, MicRecorder } from "../media";

const FORMATS: Record<string, AudioFormat> = {
  wav: AudioFormat.WAV,
  flac: AudioFormat.FLAC,
  ogg: AudioFormat.OGG,
  mp3: AudioFormat.MP3,
};

export interface VoiceSection {
  element: HTMLElement;
  /** Lists the voices into the pickers given (keeping their first, default option). */
  refresh(): Promise<void>;
  setCloning(cloning: boolean): void;
}

export function voiceSection(clients: () => Clients, pickers: HTMLSelectElement[]): VoiceSection {
  const name = h("input", { id: "omni-voice-name", size: 20, placeholder: "name" });
  const file = h("input", { id: "omni-voice-file", type: "file", accept: "audio/*,.wav,.flac,.ogg,.mp3" });
  const record = h("button", { id: "omni-voice-record", text: "● Record a sample" });
  const transcript = h("input", {
    id: "omni-voice-transcript",
    size: 40,
    placeholder: "what the sample says (optional)",
  });
  const register = h("button", { id: "omni-voice-register", text: "Register voice" });
  const note = h("div", { id: "omni-voice-note", class: "muted" });
  const list = h("ul", { id: "omni-voice-list", class: "voices" });
  const status = h("div", { id: "omni-voice-status", class: "status" });
  const element = h(
    "details",
    { id: "omni-voices", class: "voices-section" },
    h("summary", { text: "Voices" }),
    note,
    h("div", { class: "row" }, field("Name", name), field("Sample (3–30 s of one speaker)", file), record),
    h("div", { class: "row" }, field("Transcript", transcript), register),
    status,
    list,
  );

  let cloning = false;
  let recorded: { wav: Uint8Array; seconds: number } | null = null;
  const mic = new MicRecorder();

  const refresh = async () => {
    const reply = await clients().omni.listVoices({});
    for (const picker of pickers) {
      const keep = picker.value;
      picker.replaceChildren(picker.options[0] ?? h("option", { value: "", text: "default voice" }));
      for (const v of reply.voices) {
        const label = v.registered ? `${v.name} (registered${cloning ? "" : ", not usable by this model"})` : v.name;
        picker.append(h("option", { value: v.voiceId, text: label, disabled: v.registered && !cloning }));
      }
      if ([...picker.options].some((o) => o.value === keep)) picker.value = keep;
    }
    list.replaceChildren(...reply.voices.filter((v) => v.registered).map(voiceItem));
    element.dataset.voices = String(reply.voices.length);
    element.dataset.registered = String(reply.voices.filter((v) => v.registered).length);
  };

  const voiceItem = (v: Voice): HTMLElement => {
    const remove = h("button", { text: "Delete", "data-voice-id": v.voiceId });
    remove.onclick = async () => {
      try {
        await clients().omni.deleteVoice({ voiceId: v.voiceId });
        status.textContent = `deleted ${v.name}`;
        await refresh();
      } catch (error) {
        status.textContent = describeError(error);
      }
    };
    return h("li", { "data-voice-id": v.voiceId }, `${v.name} — ${seconds(v.sampleSeconds)} `, remove);
  };

  record.onclick = async () => {
    try {
      if (!mic.recording) {
        await mic.start();
        record.textContent = "■ Stop recording";
        status.textContent = "recording a sample…";
        return;
      }
      recorded = await mic.stop();
      record.textContent = "● Record a sample";
      status.textContent = `${seconds(recorded.seconds)} recorded`;
    } catch (error) {
      status.textContent = `microphone: ${error}`;
    }
  };

  register.onclick = async () => {
    const chosen = file.files?.[0];
    let sample: { data: Uint8Array; format: AudioFormat };
    if (chosen) {
      const ext = chosen.name.split(".").pop()?.toLowerCase() ?? "";
      sample = { data: await fileBytes(chosen), format: FORMATS[ext] ?? AudioFormat.UNSPECIFIED };
    } else if (recorded) {
      sample = { data: recorded.wav, format: AudioFormat.WAV };
    } else {
      status.textContent = "choose a file or record a sample first";
      return;
    }
    register.disabled = true;
    try {
      const reply = await clients().omni.registerVoice({
        name: name.value.trim(),
        transcript: transcript.value.trim(),
        sample: { source: { case: "data", value: sample.data }, format: sample.format },
      });
      const v = reply.voice;
      status.textContent = `registered ${v?.name} as ${v?.voiceId} (${seconds(v?.sampleSeconds ?? 0)})`;
      element.dataset.lastVoiceId = v?.voiceId ?? "";
      file.value = "";
      recorded = null;
      await refresh();
    } catch (error) {
      status.textContent = describeError(error);
    } finally {
      register.disabled = false;
    }
  };

  return {
    element,
    refresh,
    setCloning(value) {
      cloning = value;
      note.textContent = value
        ? "This model speaks with a registered voice: register one, then pick it above."
        : "This model cannot clone voices (it speaks only its built-in speakers): a registered " +
          "voice is kept on the server but refused when used. Serve a model that clones (MiniCPM-o) to use one.";
      element.dataset.cloning = String(value);
    },
  };
}
