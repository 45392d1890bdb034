"""Speech out as the reply is written: text goes to the TTS piece by piece while the LLM keeps
generating, so the first audio chunk leaves long before the reply is finished. The first piece
is as short as reads naturally: up to the first clause mark, or the first few words when none
comes soon; later pieces are whole sentences (each cut adds the voice's pause). Audio (from the
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
# End of the first clause: a clause or terminal mark then space, or a spaced dash. "1,000" or
# "3.5" are not boundaries: no space follows. Only the first piece is cut this fine: every cut
# costs the voice's pause at a piece's ends, worth it once for the first audio.
_FIRST_BOUNDARY = re.compile(r"[.!?;:,。！？，、；：]+[\"')\]]*\s+|\s[—–-]\s+|\n+")
# Without a clause mark, the first piece is spoken once it has this many complete words.
FIRST_PIECE_WORDS = 4


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
        self._started = False  # the first piece went to the TTS
        self.interrupted = False

    def feed(self, delta: str) -> None:
        self._pending += delta
        end = first_piece_end(self._pending) if not self._started else None
        if end is None:
            last = None
            for match in _BOUNDARY.finditer(self._pending):
                last = match
            end = last.end() if last is not None else None
        if end is not None:
            ready, self._pending = self._pending[:end], self._pending[end:]
            self._speak(ready)

    def finish(self, interrupted: bool = False) -> None:
        self.interrupted = self.interrupted or interrupted
        self._speak(self._pending)
        self._pending = ""
        self._writer.finish()

    def _speak(self, text: str) -> None:
        if not text.strip() or self.interrupted:
            return
        self._started = True
        for samples in self._tts.synthesize(text.strip(), self._speaker):
            # Checked per sentence: a barge-in or a cancel stops the voice mid-reply.
            if self._should_stop():
                self.interrupted = True
                return
            self._writer.add_waveform(samples)


def first_piece_end(text: str) -> int | None:
    """Where the first spoken piece of a reply ends: after its first clause or sentence mark,
    or after FIRST_PIECE_WORDS complete words; None while neither is there yet."""
    match = _FIRST_BOUNDARY.search(text)
    if match is not None and text[: match.start()].strip():
        return match.end()
    words = list(re.finditer(r"\S+\s+", text))
    if len(words) >= FIRST_PIECE_WORDS:
        return words[FIRST_PIECE_WORDS - 1].end()
    return None
