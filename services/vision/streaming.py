"""StreamImageEmbeddings: many images in one call, their vectors streamed in input order.

The request is cut into chunks of at most `max_device_batch` images. Each chunk is one
`embed_images` job, the same batched device operation every other vision RPC uses, so a long
stream shares micro-batches with other callers instead of holding the device for minutes. Chunks
are decoded on the CPU pool a little ahead of the device (LOOKAHEAD chunks), never all at once:
memory stays bounded whatever the number of images. The call's own events (accepted, queue,
heartbeat) come from the job of the chunk in progress, so CancelJob on any event's job id, or the
client going away, stops the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmserve.common.v1 import media_pb2
from mmserve.vision.v1 import vision_pb2
from services.runtime import job_protos
from services.runtime.app import Accepted, ServiceRuntime, fill_job_event
from services.runtime.errors import JobCancelled
from services.runtime.executor import (
    JobFinished,
    JobHeartbeat,
    JobQueued,
    SingleFlightExecutor,
)
from services.runtime.operations import InlineStream, Usage
from services.vision import scoring, validation
from services.vision.config import VisionSettings
from services.vision.embedding import Embedding, ImageRequest
from services.vision.inputs import ImageJob, Pooling

# Chunks decoded ahead of the one on the device: one keeps the device fed while the next is
# decoded; more would only hold memory.
LOOKAHEAD = 2


@dataclass(frozen=True)
class StreamRequest:
    chunks: list[ImageRequest]
    total: int
    normalize: bool


class _StopOnCancelJob:
    """CancelJob on any job id the stream has used stops the stream: the chunk in progress is
    cancelled and no further chunk starts."""

    def __init__(self, executor: SingleFlightExecutor) -> None:
        self._executor = executor
        self._current = ""
        self._removers: dict[str, Callable[[], None]] = {}
        self.reason: str | None = None

    def watch(self, job_id: str) -> None:
        self._current = job_id
        if job_id not in self._removers:
            self._removers[job_id] = self._executor.on_cancel(job_id, self._cancelled)

    def _cancelled(self) -> None:
        if self.reason is not None:
            return  # cancelling the current chunk below comes back here
        self.reason = "cancelled by CancelJob"
        if self._current:
            self._executor.cancel(self._current, self.reason)

    def check(self) -> None:
        if self.reason is not None:
            raise JobCancelled(self.reason)

    def close(self) -> None:
        for remove in self._removers.values():
            remove()
        self._removers.clear()


class StreamImageEmbeddings(InlineStream):
    def __init__(self, runtime: ServiceRuntime, embedding: Embedding) -> None:
        super().__init__(runtime)
        self.embedding = embedding
        self.settings = runtime.settings_as(VisionSettings)

    def parse(self, message: vision_pb2.StreamImageEmbeddingsRequest) -> StreamRequest:
        s = self.settings
        count = len(message.images)
        validation.check_count("images", count, s.max_images_per_stream, "image")
        pooling: Pooling = validation.pooling_of("pooling", message.pooling, s.default_pooling)
        size = min(message.chunk_size or s.max_device_batch, s.max_device_batch)
        images: list[tuple[str, media_pb2.Image]] = [
            (f"images[{i}]", image) for i, image in enumerate(message.images)
        ]
        chunks = [
            ImageRequest(tuple(images[start : start + size]), pooling)
            for start in range(0, count, size)
        ]
        normalize = message.normalize if message.HasField("normalize") else True
        return StreamRequest(chunks, count, normalize)

    async def stream(
        self, message: vision_pb2.StreamImageEmbeddingsRequest, context: Any
    ) -> AsyncIterator[vision_pb2.StreamImageEmbeddingsResponse]:
        self.runtime.ensure_ready()
        request = self.parse(message)
        operation = self.embedding.images
        decoding: deque[asyncio.Future[ImageJob]] = deque()
        upcoming = iter(request.chunks)

        def decode_ahead() -> None:
            while len(decoding) < LOOKAHEAD:
                chunk = next(upcoming, None)
                if chunk is None:
                    return
                decoding.append(
                    asyncio.ensure_future(self.runtime.run_cpu(operation.prepare, chunk))
                )

        usage = Usage()
        done = 0
        dimension = 0
        started = time.monotonic()
        executor = self.runtime.executor
        stop = _StopOnCancelJob(executor)
        decode_ahead()
        try:
            for index in range(len(request.chunks)):
                prepared = await decoding.popleft()
                decode_ahead()
                stop.check()
                vectors: np.ndarray | None = None
                events = self.runtime.stream_job(
                    context,
                    operation.kind,
                    batch_input=prepared,
                    batch_key=operation.batch_key(prepared),
                )
                async for job_id, event in events:
                    stop.watch(job_id)
                    if isinstance(event, Accepted) and index > 0:
                        event = event.queued  # only the stream's first chunk is "accepted"
                    if isinstance(event, Accepted | JobQueued | JobHeartbeat):
                        reply = vision_pb2.StreamImageEmbeddingsResponse()
                        fill_job_event(reply, job_id, event)
                        yield reply
                    elif isinstance(event, JobFinished):
                        vectors = event.result
                        usage.add(event.usage)
                stop.check()
                if vectors is None:  # the job ended without a result: it was cancelled
                    raise JobCancelled("cancelled")
                if request.normalize:
                    vectors = scoring.l2_normalize(vectors)
                dimension = int(vectors.shape[1])
                yield vision_pb2.StreamImageEmbeddingsResponse(
                    job_id=job_id,
                    embeddings=vision_pb2.EmbeddingChunk(
                        offset=done,
                        dimension=dimension,
                        embeddings=[vision_pb2.Embedding(values=row) for row in vectors.tolist()],
                    ),
                )
                done += len(vectors)
                per_image = (time.monotonic() - started) / done
                yield vision_pb2.StreamImageEmbeddingsResponse(
                    job_id=job_id,
                    progress=vision_pb2.StreamProgress(
                        done=done,
                        total=request.total,
                        eta_seconds=per_image * (request.total - done),
                    ),
                )
        finally:
            stop.close()
            for pending in decoding:
                pending.cancel()
            await asyncio.gather(*decoding, return_exceptions=True)
        yield vision_pb2.StreamImageEmbeddingsResponse(
            job_id=job_id,
            done=vision_pb2.StreamImageEmbeddingsDone(
                count=done, dimension=dimension, usage=job_protos.usage(usage)
            ),
        )
