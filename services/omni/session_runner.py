"""The device side of a live session: one executor job per user turn (`TurnRunner.run`), so the
device is free between turns for other sessions and Chat calls.

A turn job transcribes the user's audio when the model cannot hear (the transcript event comes
first; an empty transcript, noise, costs no reply), then generates the reply with the session's
history, streaming text and speech through `ctx.emit`. The conversation (and, for chat LLMs and
the Qwen-Omni thinkers, its KV cache) stays in the runner between turns; the session never runs
two turns at once, so only one device job touches it at a time.

The listening side (voice activity detection, gathering the user's turn, barge-in) runs off the
device: see `session_listener`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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


# ---- input (loop -> listener) -----------------------------------------------------------------


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


@dataclass(frozen=True)
class UserTurn:
    """What the user said and showed in one turn, ready for a turn job."""

    texts: tuple[str, ...] = ()
    images: tuple[Image.Image, ...] = ()
    audio: FloatAudio | None = None


# ---- events (device -> loop, through ctx.emit; the manager adds its own) ----------------------


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


@dataclass(frozen=True)
class TurnOutcome:
    """How a turn job ended; the manager finishes the turn (play-out, TurnDone) from it."""

    replied: bool  # False: nothing was recognized, no reply was made
    finish: FinishReason = FinishReason.STOP
    input_tokens: int = 0
    output_tokens: int = 0
    run_seconds: float = 0.0
    audio_seconds: float = 0.0
    first_audio: float | None = None  # time.monotonic() of the first speech chunk


class TurnRunner:
    def __init__(self, engine: OmniEngine, spec: SessionSpec) -> None:
        self._engine = engine
        self._spec = spec
        self._history: list[Message] = []
        if spec.system_prompt:
            self._history.append(Message(Role.SYSTEM, (TextPart(spec.system_prompt),)))
        self._conversation = ConversationState()
        # (audio, transcript) made by `transcribe_early` before the turn was complete.
        self._early: tuple[FloatAudio, str] | None = None
        # Set while no turn function runs on the device (a cancelled job's function may still
        # be winding down after its handle failed): a recording is closed only then.
        self.idle = threading.Event()
        self.idle.set()

    # ---- the jobs -----------------------------------------------------------------------

    def transcribe_early(self, ctx: JobContext, samples: FloatAudio) -> None:
        """A job queued when the user goes quiet, before the VAD ends the turn: the turn job
        that follows uses this transcript when its audio is the same (the silence lasted), so
        recognition overlaps the rest of the VAD's silence window. Nothing is emitted here:
        speech that resumes makes the result unused."""
        ctx.check()
        self._early = (samples, self._engine.transcribe(samples))

    def _transcribe(self, samples: FloatAudio) -> str:
        early, self._early = self._early, None
        if early is not None and np.array_equal(early[0], samples):
            return early[1]
        return self._engine.transcribe(samples)

    def run(self, ctx: JobContext, turn: int, user: UserTurn, stop: threading.Event) -> TurnOutcome:
        """One user turn on the device: `stop` set means the user barged in (stop replying)."""
        self.idle.clear()
        try:
            return self._run(ctx, turn, user, stop)
        finally:
            self.idle.set()

    def _run(
        self, ctx: JobContext, turn: int, user: UserTurn, stop: threading.Event
    ) -> TurnOutcome:
        started = time.monotonic()
        texts = [t.strip() for t in user.texts if t.strip()]
        audio: list[ContentPart] = []
        if user.audio is not None:
            if self._engine.traits.audio_input:
                audio.append(AudioPart(user.audio))
            else:
                # Transcribed here (not inside respond) so the transcript event comes first.
                heard = self._transcribe(user.audio)
                ctx.emit(Heard(turn, heard, True))
                if heard.strip():
                    texts.append(heard.strip())
        if not self._engine.traits.audio_input and len(texts) > 1:
            texts = [" ".join(texts)]
        if texts:
            self._line(turn, "user", " ".join(texts))
        if not texts and not audio:
            ctx.emit(ActivityChanged(turn, Activity.LISTENING, "nothing recognized"))
            return TurnOutcome(replied=False, run_seconds=time.monotonic() - started)
        parts: list[ContentPart] = [TextPart(text) for text in texts]
        parts += [ImagePart(image) for image in user.images]
        parts += audio
        ctx.check()
        return self._reply(ctx, turn, Message(Role.USER, tuple(parts)), stop, started)

    def _line(self, turn: int, role: str, text: str) -> None:
        if self._spec.recorder is not None:
            self._spec.recorder.add_line(turn, role, text)

    def _reply(
        self,
        ctx: JobContext,
        turn: int,
        message: Message,
        stop: threading.Event,
        started: float,
    ) -> TurnOutcome:
        self._history.append(message)
        ctx.emit(ActivityChanged(turn, Activity.RESPONDING, "replying"))
        first_audio: list[float] = []

        def on_audio(chunk: AudioOut) -> None:
            if not first_audio:
                first_audio.append(time.monotonic())
            if self._spec.recorder is not None:
                self._spec.recorder.add_output(chunk.pcm)
            ctx.emit(ReplyAudio(turn, chunk))

        def should_stop() -> bool:
            ctx.check()  # raises once the session closes
            return stop.is_set()

        try:
            result = self._generate(
                lambda delta: ctx.emit(ReplyText(turn, delta)), on_audio, should_stop
            )
        except BaseException:
            # A failed or cancelled turn leaves no unanswered question in the history.
            if self._history and self._history[-1] is message:
                self._history.pop()
            self._conversation = ConversationState()
            raise
        self._history.append(Message(Role.ASSISTANT, (TextPart(result.text),)))
        self._line(turn, "assistant", result.text)
        return TurnOutcome(
            replied=True,
            finish=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            run_seconds=time.monotonic() - started,
            audio_seconds=result.audio_seconds,
            first_audio=first_audio[0] if first_audio else None,
        )

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
