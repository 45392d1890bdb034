"""The listening side of a live session, off the device: gathers the user's turn from the pushed
input, runs Silero VAD (a few hundred microseconds per 32 ms frame, on the CPU pool) and says
when a turn is complete and when the user talks over the model.

Modes:
- CHAT: input accumulates until the client marks end_of_turn.
- HALF_DUPLEX: VAD finds the end of the user's speech; audio that arrives while a turn is
  queued or answered is dropped (the model does not listen while it speaks).
- AUDIO_DUPLEX / OMNI_DUPLEX: VAD keeps listening while the model answers and while its speech
  still plays on the client: user speech then interrupts the reply (barge-in) and becomes the
  next turn. OMNI_DUPLEX also takes video frames; the latest one goes with the user's turn.
  None of the families here decides listen/speak natively, so VAD makes that decision.

Not thread-safe: the session manager calls it under the session's push lock (feed on the CPU
pool, the rest on the loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from services.omni.recordings import SessionRecorder
from services.omni.session_runner import (
    AudioIn,
    ImageIn,
    Mode,
    SessionInput,
    TextIn,
    UserTurn,
)
from services.omni.turns import FloatAudio
from services.omni.vad import VadEvent, VadUpdate, VoiceActivityDetector


@dataclass(frozen=True)
class VadNote:
    """VAD heard the user start or stop speaking (a LISTENING state change with this reason)."""

    reason: str


@dataclass(frozen=True)
class TurnReady:
    user: UserTurn


@dataclass(frozen=True)
class BargeIn:
    """The user started speaking over the model's reply."""


@dataclass(frozen=True)
class SpeechPaused:
    """The user went quiet: `audio` is the turn's audio if the silence lasts (VAD's
    SPEECH_PAUSED), so the turn's transcription may start before the turn is complete."""

    audio: FloatAudio


@dataclass(frozen=True)
class SpeechResumed:
    """The user spoke again after SpeechPaused: that audio will not be the turn's."""


ListenerAction = VadNote | TurnReady | BargeIn | SpeechPaused | SpeechResumed


@dataclass
class _Gathering:
    audio: list[FloatAudio] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.audio or self.texts or self.images)


class Listener:
    def __init__(
        self,
        mode: Mode,
        vad: VoiceActivityDetector | None,
        max_images: int,
        recorder: SessionRecorder | None = None,
    ) -> None:
        self._mode = mode
        self._vad = vad
        self._max_images = max_images
        self._recorder = recorder
        self._pending = _Gathering()
        self._frame: Image.Image | None = None  # OMNI_DUPLEX: the latest video frame
        self._deferred: list[VadUpdate] = []  # VAD results heard while a turn runs
        self._barged = False
        # True from a complete user turn until the manager has finished its reply.
        self.replying = False

    def feed(self, item: SessionInput | None, end_of_turn: bool) -> list[ListenerAction]:
        """Takes one pushed chunk (and the client's end of turn); returns what follows."""
        actions: list[ListenerAction] = []
        if isinstance(item, AudioIn):
            actions += self._audio(item.samples)
        elif isinstance(item, ImageIn):
            if self._mode is Mode.OMNI_DUPLEX:
                self._frame = item.image
            elif len(self._pending.images) < self._max_images:
                self._pending.images.append(item.image)
        elif isinstance(item, TextIn):
            self._pending.texts.append(item.text)
        if end_of_turn and not (self.replying and self._mode.duplex):
            # (In duplex modes the model is speaking: there is no user turn to end yet.)
            if self._vad is not None:
                speech = self._vad.take_speech()
                if speech is not None:
                    self._pending.audio.append(speech)
            actions += self._turn_ready()
        return actions

    def reply_ended(self) -> list[ListenerAction]:
        """The manager finished a turn: back to listening, with what VAD heard meanwhile."""
        self.replying = False
        self._barged = False
        if self._mode is Mode.HALF_DUPLEX and self._vad is not None:
            self._vad.reset()
        actions: list[ListenerAction] = []
        deferred, self._deferred = self._deferred, []
        for update in deferred:
            actions += self._on_vad(update)
        return actions

    def _audio(self, samples: FloatAudio) -> list[ListenerAction]:
        if self._recorder is not None:
            self._recorder.add_input(samples)
        if self._vad is None:
            self._pending.audio.append(samples)
            return []
        if self.replying and self._mode is Mode.HALF_DUPLEX:
            return []  # heard while speaking: dropped
        actions: list[ListenerAction] = []
        for update in self._vad.feed(samples):
            if update.event in (VadEvent.SPEECH_PAUSED, VadEvent.SPEECH_RESUMED):
                early = self._early(update)
                if early is not None and not self.replying:
                    actions.append(early)
            elif not self.replying:
                actions += self._on_vad(update)
            elif update.event is VadEvent.SPEECH_STARTED and not self._barged:
                self._barged = True
                actions.append(BargeIn())
            else:
                self._deferred.append(update)
        return actions

    def _early(self, update: VadUpdate) -> SpeechPaused | SpeechResumed | None:
        """Only a turn whose audio is this one utterance (none gathered before it) is known
        early: its audio is then exactly the paused utterance."""
        if update.event is VadEvent.SPEECH_RESUMED:
            return SpeechResumed()
        if update.utterance is None or self._pending.audio:
            return None
        return SpeechPaused(update.utterance)

    def _on_vad(self, update: VadUpdate) -> list[ListenerAction]:
        actions: list[ListenerAction] = [VadNote(f"vad: {update.event.value}")]
        if update.event is VadEvent.SPEECH_ENDED and update.utterance is not None:
            self._pending.audio.append(update.utterance)
            actions += self._turn_ready()
        return actions

    def _turn_ready(self) -> list[ListenerAction]:
        pending, self._pending = self._pending, _Gathering()
        if pending.empty():
            return []
        images = pending.images or ([self._frame] if self._frame is not None else [])
        audio = np.concatenate(pending.audio) if pending.audio else None
        self.replying = True
        return [TurnReady(UserTurn(tuple(pending.texts), tuple(images), audio))]
