"""Speech out as the reply is written: complete sentences go to the TTS while the LLM keeps
generating, so the first audio chunk leaves long before the reply is finished. Audio (from the
TTS or a family's native waveform) is cut into chunks of exactly the size the client asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from services.omni.audio import PcmChunker, to_pcm16
from services.omni.tts import PiperTts
from services.omni.turns import AudioOut, FloatAudio

# End of a sentence: terminal punctuation (with closing quotes/brackets) then space, or a newline.
_BOUNDARY = re.compile(r"[.!?;:。！？]+[\"')\]]*\s+|\n+")


class SpeechWriter:
    """Collects and chunks speech for one reply; `emit` gets each chunk as it is ready."""

    def __init__(
        self,
        sample_rate: int,
        chunk_ms: int,
        emit: Callable[[AudioOut], None],
        *,
        keep: bool = False,
    ) -> None:
        self.sample_rate = sample_rate
        self._chunker = PcmChunker(sample_rate, chunk_ms)
        self._emit = emit
        self._keep = keep
        self._parts: list[bytes] = []

    def add_waveform(self, samples: FloatAudio) -> None:
        self._send(self._chunker.push(to_pcm16(samples)))

    def finish(self) -> None:
        self._send(self._chunker.flush())

    def _send(self, chunks: list[tuple[int, bytes]]) -> None:
        for index, pcm in chunks:
            if self._keep:
                self._parts.append(pcm)
            self._emit(AudioOut(pcm, self.sample_rate, index))

    @property
    def pcm(self) -> bytes:
        return b"".join(self._parts)

    @property
    def seconds(self) -> float:
        return self._chunker.seconds

    @property
    def chunks_sent(self) -> int:
        return self._chunker.index


class SentenceSpeaker:
    """Feeds reply text to a TTS sentence by sentence, writing the audio to a SpeechWriter."""

    def __init__(
        self,
        tts: PiperTts,
        speaker: str,
        writer: SpeechWriter,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self._tts = tts
        self._speaker = speaker
        self._writer = writer
        self._should_stop = should_stop
        self._pending = ""
        self.interrupted = False

    def feed(self, delta: str) -> None:
        self._pending += delta
        last = None
        for match in _BOUNDARY.finditer(self._pending):
            last = match
        if last is not None:
            ready, self._pending = self._pending[: last.end()], self._pending[last.end() :]
            self._speak(ready)

    def finish(self, interrupted: bool = False) -> None:
        self.interrupted = self.interrupted or interrupted
        self._speak(self._pending)
        self._pending = ""
        self._writer.finish()

    def _speak(self, text: str) -> None:
        if not text.strip() or self.interrupted:
            return
        for samples in self._tts.synthesize(text.strip(), self._speaker):
            # Checked per sentence: a barge-in or a cancel stops the voice mid-reply.
            if self._should_stop():
                self.interrupted = True
                return
            self._writer.add_waveform(samples)
