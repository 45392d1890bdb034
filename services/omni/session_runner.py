"""The device side of a live session: one executor job that holds the model for the session's
whole life (as the system we replace does) and loops over the client's input.

Modes:
- CHAT: input accumulates until the client marks end_of_turn; then the model answers.
- HALF_DUPLEX: Silero VAD finds the end of the user's speech and the model answers; audio that
  arrives while it answers is dropped (it does not listen while it speaks).
- AUDIO_DUPLEX / OMNI_DUPLEX: the VAD keeps listening while the model answers and while its
  speech would still be playing on the client (the reply's audio length, in real time, from the
  first chunk): user speech then interrupts the reply (barge-in, finish CANCELLED) and becomes
  the next turn. OMNI_DUPLEX also takes video frames; the latest one goes with the user's turn.
  None of the families here decides listen/speak natively, so VAD makes that decision.

The conversation (and, for chat LLMs and the Qwen-Omni thinkers, its KV cache) is kept across
turns. Input arrives through
a thread-safe queue from the loop; events leave through `ctx.emit`.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from services.omni.engine import OmniEngine, VoiceChoice
from services.omni.families.base import ConversationState
from services.omni.recordings import SessionRecorder
from services.omni.turns import (
    AudioOut,
    AudioPart,
    ChatJob,
    ChatResult,
    FloatAudio,
    SpeechRequest,
)
from services.omni.vad import VadEvent, VadUpdate, VoiceActivityDetector
from services.runtime.chat.messages import (
    ContentPart,
    FinishReason,
    ImagePart,
    Message,
    Role,
    TextDelta,
    TextPart,
)
from services.runtime.chat.sampling import SamplingPlan
from services.runtime.errors import InvalidArgument
from services.runtime.executor import JobContext

log = logging.getLogger("mmserve.omni")

_POLL_SECONDS = 0.05


class Mode(enum.StrEnum):
    CHAT = "chat"
    HALF_DUPLEX = "half_duplex"
    AUDIO_DUPLEX = "audio_duplex"
    OMNI_DUPLEX = "omni_duplex"

    @property
    def uses_vad(self) -> bool:
        return self is not Mode.CHAT

    @property
    def duplex(self) -> bool:
        return self in (Mode.AUDIO_DUPLEX, Mode.OMNI_DUPLEX)


class Activity(enum.StrEnum):
    LISTENING = "listening"
    RESPONDING = "responding"


# ---- input (loop -> device) -------------------------------------------------------------------


@dataclass(frozen=True)
class AudioIn:
    samples: FloatAudio  # 16 kHz mono


@dataclass(frozen=True)
class ImageIn:
    image: Image.Image


@dataclass(frozen=True)
class TextIn:
    text: str


@dataclass(frozen=True)
class EndOfTurn:
    pass


SessionInput = AudioIn | ImageIn | TextIn | EndOfTurn


# ---- events (device -> loop, through ctx.emit) ------------------------------------------------


@dataclass(frozen=True)
class ActivityChanged:
    turn: int
    activity: Activity
    reason: str


@dataclass(frozen=True)
class Heard:
    turn: int
    text: str
    final: bool


@dataclass(frozen=True)
class ReplyText:
    turn: int
    delta: TextDelta


@dataclass(frozen=True)
class ReplyAudio:
    turn: int
    chunk: AudioOut


@dataclass(frozen=True)
class TurnDone:
    turn: int
    finish: FinishReason
    input_tokens: int
    output_tokens: int
    run_seconds: float


SessionEvent = ActivityChanged | Heard | ReplyText | ReplyAudio | TurnDone


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    mode: Mode
    system_prompt: str
    sampling: SamplingPlan
    speech: SpeechRequest
    voice: VoiceChoice
    max_images: int
    recorder: SessionRecorder | None = None


@dataclass
class _Turn:
    """The user's turn being gathered."""

    audio: list[FloatAudio] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.audio or self.texts or self.images)


class SessionRunner:
    def __init__(self, engine: OmniEngine, spec: SessionSpec, inbox: queue.Queue[Any]) -> None:
        self._engine = engine
        self._spec = spec
        self._inbox = inbox
        self._vad: VoiceActivityDetector | None = engine.new_vad() if spec.mode.uses_vad else None
        self._history: list[Message] = []
        if spec.system_prompt:
            self._history.append(Message(Role.SYSTEM, (TextPart(spec.system_prompt),)))
        self._conversation = ConversationState()
        self._turn = 0
        self._pending = _Turn()
        self._frame: Image.Image | None = None  # OMNI_DUPLEX: the latest video frame
        self._deferred: list[VadUpdate] = []  # VAD results seen while replying
        self._ctx: JobContext | None = None
        self.started = False
        self.done = threading.Event()  # set once the runner has let go (recording written)

    # ---- the job ------------------------------------------------------------------------

    def run(self, ctx: JobContext) -> int:
        """Loops until the session's job is cancelled (close, timeout, drain); returns turns."""
        self._ctx = ctx
        self.started = True
        try:
            self._emit(ActivityChanged(self._turn, Activity.LISTENING, "session started"))
            while True:
                ctx.check()
                try:
                    item = self._inbox.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                self._handle(item)
        finally:
            if self._spec.recorder is not None:
                self._spec.recorder.close(turns=self._turn, mode=self._spec.mode.value)
            self.done.set()

    def _emit(self, event: SessionEvent) -> None:
        assert self._ctx is not None
        self._ctx.emit(event)

    def _handle(self, item: SessionInput) -> None:
        if isinstance(item, AudioIn):
            self._record_input(item.samples)
            if self._vad is None:
                self._pending.audio.append(item.samples)
            else:
                for update in self._vad.feed(item.samples):
                    self._on_vad(update)
        elif isinstance(item, ImageIn):
            if self._spec.mode is Mode.OMNI_DUPLEX:
                self._frame = item.image
            elif len(self._pending.images) < self._spec.max_images:
                self._pending.images.append(item.image)
        elif isinstance(item, TextIn):
            self._pending.texts.append(item.text)
        elif isinstance(item, EndOfTurn):
            if self._vad is not None:
                speech = self._vad.take_speech()
                if speech is not None:
                    self._pending.audio.append(speech)
            self._user_turn()

    def _on_vad(self, update: VadUpdate) -> None:
        self._emit(ActivityChanged(self._turn, Activity.LISTENING, f"vad: {update.event.value}"))
        if update.event is VadEvent.SPEECH_ENDED and update.utterance is not None:
            self._pending.audio.append(update.utterance)
            self._user_turn()

    def _record_input(self, samples: FloatAudio) -> None:
        if self._spec.recorder is not None:
            self._spec.recorder.add_input(samples)

    # ---- one turn -------------------------------------------------------------------------

    def _user_turn(self) -> None:
        turn, self._pending = self._pending, _Turn()
        if turn.empty():
            return
        parts: list[ContentPart] = [TextPart(text) for text in turn.texts]
        images = turn.images or ([self._frame] if self._frame is not None else [])
        parts += [ImagePart(image) for image in images]
        if turn.audio:
            parts.append(AudioPart(np.concatenate(turn.audio)))
        heard: list[str] = []
        message = Message(Role.USER, tuple(parts))
        if turn.audio and not self._engine.traits.audio_input:
            # Transcribe here (not inside respond) so the transcript event comes first and an
            # empty transcript (noise) costs no reply.
            message = self._engine_transcribed(message, heard)
            if not message.text().strip():
                self._emit(ActivityChanged(self._turn, Activity.LISTENING, "nothing recognized"))
                return
        self._reply(message)

    def _engine_transcribed(self, message: Message, heard: list[str]) -> Message:
        texts = []
        for part in message.content:
            if isinstance(part, AudioPart):
                text = self._engine.transcribe(part.samples)
                heard.append(text)
                self._emit(Heard(self._turn, text, True))
                self._line("user", text)
                texts.append(text)
            elif isinstance(part, TextPart):
                texts.append(part.text)
        others = tuple(p for p in message.content if isinstance(p, ImagePart))
        joined = " ".join(t.strip() for t in texts if t.strip())
        return Message(Role.USER, (TextPart(joined), *others))

    def _line(self, role: str, text: str) -> None:
        if self._spec.recorder is not None:
            self._spec.recorder.add_line(self._turn, role, text)

    def _reply(self, message: Message) -> None:
        turn = self._turn
        self._history.append(message)
        self._emit(ActivityChanged(turn, Activity.RESPONDING, "replying"))
        started = time.monotonic()
        first_audio: list[float] = []

        def on_audio(chunk: AudioOut) -> None:
            if not first_audio:
                first_audio.append(time.monotonic())
            if self._spec.recorder is not None:
                self._spec.recorder.add_output(chunk.pcm)
            self._emit(ReplyAudio(turn, chunk))

        result = self._generate(
            lambda delta: self._emit(ReplyText(turn, delta)), on_audio, self._listening_check
        )
        finish = result.finish_reason
        if finish is not FinishReason.CANCELLED and self._spec.mode.duplex and first_audio:
            finish = self._play_out(first_audio[0] + result.audio_seconds)
        self._history.append(Message(Role.ASSISTANT, (TextPart(result.text),)))
        self._line("assistant", result.text)
        self._emit(
            TurnDone(
                turn,
                finish,
                result.input_tokens,
                result.output_tokens,
                time.monotonic() - started,
            )
        )
        self._turn += 1
        reason = "barge-in" if finish is FinishReason.CANCELLED else "turn completed"
        self._emit(ActivityChanged(self._turn, Activity.LISTENING, reason))
        if self._spec.mode is Mode.HALF_DUPLEX:
            self._drop_audio_heard_while_speaking()
        for update in self._deferred:
            self._on_vad(update)
        self._deferred = []

    def _generate(
        self,
        on_text: Callable[[TextDelta], None],
        on_audio: Callable[[AudioOut], None],
        should_stop: Callable[[], bool],
    ) -> ChatResult:
        """Generates with the history, dropping the oldest exchanges when the context is full."""
        while True:
            job = ChatJob(tuple(self._history), self._spec.sampling, self._spec.speech)
            try:
                return self._engine.respond(
                    job,
                    self._spec.voice,
                    emit_text=on_text,
                    emit_audio=on_audio,
                    should_stop=should_stop,
                    state=self._conversation,
                )
            except InvalidArgument:
                first = 1 if self._history and self._history[0].role is Role.SYSTEM else 0
                if len(self._history) - first <= 1:
                    raise
                del self._history[first : first + 2]
                self._conversation = ConversationState()

    def _listening_check(self) -> bool:
        """Called between tokens and sentences: cancels the job when asked; in duplex modes
        also listens, and reports a barge-in when the user starts speaking."""
        assert self._ctx is not None
        self._ctx.check()
        if not self._spec.mode.duplex:
            return False
        return self._listen_now()

    def _listen_now(self) -> bool:
        """Takes the input that arrived so far (without waiting); True on user speech."""
        barge_in = False
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return barge_in
            if isinstance(item, AudioIn):
                assert self._vad is not None
                self._record_input(item.samples)
                for update in self._vad.feed(item.samples):
                    if update.event is VadEvent.SPEECH_STARTED and not barge_in:
                        barge_in = True
                        continue
                    self._deferred.append(update)
            elif isinstance(item, ImageIn):
                self._frame = item.image
            elif isinstance(item, TextIn):
                self._pending.texts.append(item.text)
            # end_of_turn while the model speaks: nothing to end yet

    def _play_out(self, ends_at: float) -> FinishReason:
        """Duplex: the client still plays the reply until `ends_at`; speech meanwhile barges in."""
        assert self._ctx is not None
        while time.monotonic() < ends_at:
            self._ctx.check()
            if self._listen_now():
                return FinishReason.CANCELLED
            time.sleep(min(_POLL_SECONDS, max(0.0, ends_at - time.monotonic())))
        return FinishReason.STOP

    def _drop_audio_heard_while_speaking(self) -> None:
        kept: list[SessionInput] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, AudioIn):
                self._record_input(item.samples)
            else:
                kept.append(item)
        for item in kept:
            self._inbox.put(item)
        if self._vad is not None:
            self._vad.reset()
