"""Turning generated token ids into streamed text: whole characters only, stop sequences cut.

The pieces are pure Python over a tokenizer's `decode`, so they are unit-testable and run the
same for one request, a batch row or a transformers streamer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str: ...


class IncrementalDecoder:
    """Decodes tokens one at a time without ever splitting a character.

    Byte-level BPE tokens can end in the middle of a UTF-8 character (an emoji is often three
    tokens); decoding such a prefix yields U+FFFD. Text is held back while it ends that way and
    released once the character completes. Decoding a sliding window (prefix_offset, the last
    released boundary) rather than single tokens keeps tokenizers that strip a leading space
    at the start of a decode (SentencePiece) correct, as in TGI and vLLM.
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that is decoded for context
        self._read = 0  # end of the text already released

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Adds one token; returns the newly completed text (often empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character decodes as U+FFFD, as a full
        decode of the same ids would)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class StopMatcher:
    """Cuts the text before the first stop sequence, holding back any tail that could still
    become one, so a stop sequence is never streamed and the streamed text always equals the
    final text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Adds decoded text; returns (text safe to release, whether a stop sequence matched)."""
        if not self._stops:
            return text, False
        buffer = self._pending + text
        hits = [index for index in (buffer.find(s) for s in self._stops) if index >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        hold = self._held_tail(buffer)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def _held_tail(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def flush(self) -> str:
        """The held-back tail, released when generation ends without a match."""
        pending, self._pending = self._pending, ""
        return pending


class TextAssembler:
    """Token ids in, releasable text out: IncrementalDecoder then StopMatcher. The final answer
    is exactly the concatenation of what it released."""

    def __init__(self, tokenizer: Decoder, stops: Sequence[str]) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._matcher = StopMatcher(stops)
        self._parts: list[str] = []
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text released by it. Sets `stopped` on a stop sequence."""
        if self.stopped:
            return ""
        released, self.stopped = self._matcher.feed(self._decoder.push(token_id))
        self._parts.append(released)
        return released

    def finish(self) -> str:
        """Ends generation (end-of-turn token or length): releases what was held back."""
        if self.stopped:
            return ""
        released, self.stopped = self._matcher.feed(self._decoder.flush())
        if not self.stopped:
            released += self._matcher.flush()
        self._parts.append(released)
        return released

    @property
    def text(self) -> str:
        return "".join(self._parts)
