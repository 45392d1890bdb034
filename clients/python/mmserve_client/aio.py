"""asyncio clients (grpc.aio), one per capability: the same methods as the blocking clients,
awaited; streams are async iterators. Requests and results use the same `wire` functions.

    async with aio.VisionClient("127.0.0.1:50053") as vision:
        embeddings = await vision.embed_images([Path("cat.png")])
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmserve.common.v1 import job_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.vision.v1 import vision_pb2

from . import search
from .audio import AudioLike
from .base import OMNI, T2I, VISION, VL, ClientCore
from .calls import AsyncCaller, OnJob, Parse, PinKey, R
from .errors import MMServeError, Unavailable
from .events import ChatEvent, SessionEvent, T2IEvent
from .images import ImageLike
from .results import (
    ChatReply,
    Classifications,
    Embeddings,
    Generation,
    Job,
    PushAck,
    Ranking,
    ServiceInfo,
    SessionClosed,
    SessionInfo,
    SessionState,
    Similarity,
    Voice,
)
from .speech import Speech, SpeechEvent, Transcription, TranscriptionEvent
from .streams import AsyncJobStream
from .wire import common, omni, t2i, vision, vl
from .wire.common import MessageLike, SamplingOptions
from .wire.t2i import GenerateOptions
from .wire.vision import VisionItem


class Client(ClientCore):
    """Calls every capability shares: jobs, model info, health. Close it (or `async with`)."""

    def _new_channel(self) -> grpc.aio.Channel:
        return self.connection.aio_channel()

    @functools.cached_property
    def _caller(self) -> AsyncCaller:
        return AsyncCaller(self.connection)

    async def _unary(
        self,
        rpc: str,
        request: Any,
        parse: Parse[R],
        timeout: float | None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        pin: str | None = None,
        pin_key: PinKey | None = None,
    ) -> R:
        method = getattr(self._stub, rpc)
        early = self.SPEC.headers_first(self._channel, rpc) if on_job is not None else None
        return await self._caller.unary(
            method,
            request,
            parse,
            timeout=timeout,
            on_job=on_job,
            request_id=request_id,
            headers_first=early,
            pin=pin,
            pin_key=pin_key,
        )

    async def get_job(
        self, job_id: str, *, replica: str | None = None, timeout: float | None = 10.0
    ) -> Job:
        """The job's state; `replica` pins the call to the replica that runs it (the
        `mmserve-replica` header, remembered by this client for its own jobs)."""
        if replica:
            self._caller.pins.pin(job_id, replica)
        request = job_pb2.GetJobRequest(job_id=job_id)
        return await self._unary("GetJob", request, common.job_response, timeout, pin=job_id)

    async def cancel_job(
        self, job_id: str, *, replica: str | None = None, timeout: float | None = 10.0
    ) -> Job:
        """Cancels a queued or running job (see get_job for `replica`)."""
        if replica:
            self._caller.pins.pin(job_id, replica)
        request = job_pb2.CancelJobRequest(job_id=job_id)
        return await self._unary("CancelJob", request, common.job_response, timeout, pin=job_id)

    async def info(self, *, timeout: float | None = 10.0) -> ServiceInfo:
        request = self.SPEC.info_request()
        return await self._unary("GetModelInfo", request, common.service_info, timeout)

    def replica_of(self, job_or_session_id: str) -> str:
        """The `mmserve-replica` value the edge gave for a job or session ("" when direct)."""
        return self._caller.pins.get(job_or_session_id)

    async def health(self, *, timeout: float | None = 5.0, service: str | None = None) -> str:
        """grpc.health.v1 status of this service: "serving", "not_serving", "service_unknown"."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(
            service=self.SPEC.name if service is None else service
        )
        reply = await self._caller.unary(
            stub.Check, request, lambda r, _: r.status, timeout=timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply)).lower()

    async def wait_ready(self, timeout: float = 120.0, poll: float = 0.2) -> None:
        """Waits until the service reports SERVING (its model loaded and warm)."""
        deadline = time.monotonic() + timeout
        status = "unreachable"
        while time.monotonic() < deadline:
            try:
                remaining = min(5.0, max(0.1, deadline - time.monotonic()))
                status = await self.health(timeout=remaining)
                if status == "serving":
                    return
            except MMServeError as error:
                status = error.code.name.lower()
            await asyncio.sleep(poll)
        raise Unavailable(
            f"{self.SPEC.name} at {self.target} not serving after {timeout}s: {status}"
        )

    async def close(self) -> None:
        if self._own_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class T2IClient(Client):
    """Text-to-image and image-to-image (mmserve.t2i.v1.ImageGenerationService)."""

    SPEC = T2I

    async def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generation:
        request = t2i.text_to_image(prompt, options)
        return await self._unary(
            "TextToImage", request, t2i.generation_response, timeout, on_job, request_id
        )

    def stream_generate(
        self,
        prompt: str,
        *,
        preview_every: int = 0,
        preview_max_side: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncJobStream[T2IEvent]:
        request = t2i.text_to_image(prompt, options, preview_every, preview_max_side)
        return self._caller.stream(
            self._stub.StreamTextToImage,
            request,
            t2i.t2i_event,
            timeout=timeout,
            request_id=request_id,
        )

    async def edit(
        self,
        image: ImageLike,
        prompt: str,
        *,
        strength: float | None = None,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generation:
        request = t2i.image_to_image(image, prompt, options, strength)
        return await self._unary(
            "ImageToImage", request, t2i.generation_response, timeout, on_job, request_id
        )

    def stream_edit(
        self,
        image: ImageLike,
        prompt: str,
        *,
        strength: float | None = None,
        preview_every: int = 0,
        preview_max_side: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncJobStream[T2IEvent]:
        request = t2i.image_to_image(
            image, prompt, options, strength, preview_every, preview_max_side
        )
        return self._caller.stream(
            self._stub.StreamImageToImage,
            request,
            t2i.t2i_event,
            timeout=timeout,
            request_id=request_id,
        )

    async def inpaint(
        self,
        image: ImageLike,
        mask: ImageLike,
        prompt: str,
        *,
        strength: float | None = None,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generation:
        """Repaints the white part of `mask` (the image's size; black is kept)."""
        request = t2i.inpaint_image(image, mask, prompt, options, strength)
        return await self._unary(
            "InpaintImage", request, t2i.generation_response, timeout, on_job, request_id
        )

    def stream_inpaint(
        self,
        image: ImageLike,
        mask: ImageLike,
        prompt: str,
        *,
        strength: float | None = None,
        preview_every: int = 0,
        preview_max_side: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncJobStream[T2IEvent]:
        request = t2i.inpaint_image(
            image, mask, prompt, options, strength, preview_every, preview_max_side
        )
        return self._caller.stream(
            self._stub.StreamInpaintImage,
            request,
            t2i.t2i_event,
            timeout=timeout,
            request_id=request_id,
        )

    async def instruct(
        self,
        image: ImageLike,
        instruction: str,
        *,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generation:
        """An instruction edit ("make the sky purple", EditImage); models with an edit pipeline
        only (info().extras / GetModelInfo limits.supports_image_editing)."""
        request = t2i.edit_image(image, instruction, options)
        return await self._unary(
            "EditImage", request, t2i.generation_response, timeout, on_job, request_id
        )

    def stream_instruct(
        self,
        image: ImageLike,
        instruction: str,
        *,
        preview_every: int = 0,
        preview_max_side: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncJobStream[T2IEvent]:
        request = t2i.edit_image(image, instruction, options, preview_every, preview_max_side)
        return self._caller.stream(
            self._stub.StreamEditImage,
            request,
            t2i.t2i_event,
            timeout=timeout,
            request_id=request_id,
        )


class VLClient(Client):
    """Image understanding chat (mmserve.vl.v1.VisionLanguageService)."""

    SPEC = VL

    async def chat(
        self,
        messages: str | Sequence[MessageLike],
        *,
        images: Sequence[ImageLike] = (),
        system: str | None = None,
        min_pixels: int = 0,
        max_pixels: int = 0,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> ChatReply:
        request = vl.chat_request(messages, images, system, min_pixels, max_pixels, sampling)
        return await self._unary("Chat", request, vl.chat_response, timeout, on_job, request_id)

    def stream_chat(
        self,
        messages: str | Sequence[MessageLike],
        *,
        images: Sequence[ImageLike] = (),
        system: str | None = None,
        min_pixels: int = 0,
        max_pixels: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> AsyncJobStream[ChatEvent]:
        request = vl.chat_request(messages, images, system, min_pixels, max_pixels, sampling)
        return self._caller.stream(
            self._stub.StreamChat, request, vl.chat_event, timeout=timeout, request_id=request_id
        )


class VisionClient(Client):
    """Embeddings, similarity, zero-shot and ranking (mmserve.vision.v1.VisionService). In item
    lists (similarity, rank) a `str` is a text: pass image files as pathlib.Path."""

    SPEC = VISION

    async def embed_images(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        normalize: bool = True,
        pooling: str | None = None,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Embeddings:
        request = vision.embed_images(images, normalize, pooling)
        return await self._unary(
            "EmbedImages", request, vision.embeddings, timeout, on_job, request_id
        )

    async def embed_texts(
        self,
        texts: str | Sequence[str],
        *,
        normalize: bool = True,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Embeddings:
        request = vision.embed_texts(texts, normalize)
        return await self._unary(
            "EmbedTexts", request, vision.embeddings, timeout, on_job, request_id
        )

    async def similarity(
        self,
        queries: Sequence[VisionItem],
        candidates: Sequence[VisionItem],
        *,
        metric: str = "cosine",
        pooling: str | None = None,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Similarity:
        request = vision.similarity(queries, candidates, metric, pooling)
        return await self._unary(
            "ComputeSimilarity", request, vision.similarity_response, timeout, on_job, request_id
        )

    async def classify(
        self,
        images: ImageLike | Iterable[ImageLike],
        labels: Sequence[str],
        *,
        templates: Sequence[str] = (),
        top_k: int = 0,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Classifications:
        request = vision.classify(images, labels, templates, top_k)
        return await self._unary(
            "ClassifyZeroShot", request, vision.classify_response, timeout, on_job, request_id
        )

    async def rank(
        self,
        query: VisionItem,
        candidates: Sequence[VisionItem],
        *,
        top_k: int = 0,
        metric: str = "cosine",
        pooling: str | None = None,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Ranking:
        request = vision.rank(query, candidates, top_k, metric, pooling)
        return await self._unary("Rank", request, vision.rank_response, timeout, on_job, request_id)

    def stream_embed_images(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        chunk_size: int = 0,
        normalize: bool = True,
        pooling: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncJobStream[search.EmbedEvent]:
        """Many images in one call: EmbeddedChunk events in input order, EmbedProgress after
        each, EmbedDone last. Large sets are best sent as file:// or https:// URIs."""
        request = search.stream_embed_request(images, chunk_size, normalize, pooling)
        return self._caller.stream(
            self._stub.StreamImageEmbeddings,
            request,
            search.embed_event,
            timeout=timeout,
            request_id=request_id,
        )

    async def embed_many(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        chunk_size: int = 0,
        normalize: bool = True,
        pooling: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
    ) -> Embeddings:
        """stream_embed_images gathered into one matrix; `on_progress(done, total)`."""
        stream = self.stream_embed_images(
            images, chunk_size=chunk_size, normalize=normalize, pooling=pooling, timeout=timeout
        )
        return await search.gather_embeddings_async(stream, on_progress)

    async def create_collection(
        self, name: str, *, exist_ok: bool = False, timeout: float | None = 10.0
    ) -> search.Collection:
        request = vision_pb2.CreateCollectionRequest(name=name, exist_ok=exist_ok)
        return await self._unary(
            "CreateCollection", request, lambda r, _: search.collection(r.collection), timeout
        )

    async def list_collections(self, *, timeout: float | None = 10.0) -> list[search.Collection]:
        request = vision_pb2.ListCollectionsRequest()
        return await self._unary(
            "ListCollections",
            request,
            lambda r, _: [search.collection(c) for c in r.collections],
            timeout,
        )

    async def delete_collection(self, name: str, *, timeout: float | None = 10.0) -> int:
        """Deletes a collection; returns how many items it held."""
        request = vision_pb2.DeleteCollectionRequest(name=name)
        return await self._unary("DeleteCollection", request, lambda r, _: r.deleted_items, timeout)

    async def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        images: Sequence[ImageLike] | None = None,
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        metadata: Sequence[Mapping[str, str]] | None = None,
        pooling: str | None = None,
        timeout: float | None = None,
    ) -> search.Upserted:
        """Adds or replaces items: one of images, texts or vectors, one per id."""
        request = search.upsert_request(
            collection,
            ids,
            images=images,
            texts=texts,
            vectors=vectors,
            metadata=metadata,
            pooling=pooling,
        )
        return await self._unary("UpsertItems", request, search.upserted, timeout)

    async def delete_items(
        self, collection: str, ids: Sequence[str], *, timeout: float | None = 10.0
    ) -> int:
        request = vision_pb2.DeleteItemsRequest(collection=collection, ids=list(ids))
        return await self._unary("DeleteItems", request, lambda r, _: r.deleted, timeout)

    async def get_items(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        include_vectors: bool = False,
        timeout: float | None = 10.0,
    ) -> search.Items:
        request = vision_pb2.GetItemsRequest(
            collection=collection, ids=list(ids), include_vectors=include_vectors
        )
        return await self._unary("GetItems", request, search.items, timeout)

    async def search(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: ImageLike | None = None,
        vector: Any = None,
        item_id: str | None = None,
        top_k: int = 10,
        where: Mapping[str, str] | None = None,
        include_vectors: bool = False,
        pooling: str | None = None,
        timeout: float | None = None,
    ) -> search.SearchResult:
        """The nearest items to one of text, image, vector or a stored item's id; `where`
        keeps only items whose metadata hold every given key/value pair."""
        request = search.search_request(
            collection,
            text=text,
            image=image,
            vector=vector,
            item_id=item_id,
            top_k=top_k,
            where=where,
            include_vectors=include_vectors,
            pooling=pooling,
        )
        return await self._unary("Search", request, search.search_result, timeout)


class OmniClient(Client):
    """Omni chat with speech, live sessions and voices (mmserve.omni.v1.OmniService)."""

    SPEC = OMNI

    async def chat(
        self,
        messages: str | Sequence[MessageLike],
        *,
        images: Sequence[ImageLike] = (),
        audio: Sequence[AudioLike] = (),
        system: str | None = None,
        speech: bool = False,
        voice: str = "",
        chunk_ms: int = 0,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> ChatReply:
        request = omni.chat_request(
            messages, images, audio, system, speech, voice, chunk_ms, sampling
        )
        return await self._unary("Chat", request, omni.chat_response, timeout, on_job, request_id)

    def stream_chat(
        self,
        messages: str | Sequence[MessageLike],
        *,
        images: Sequence[ImageLike] = (),
        audio: Sequence[AudioLike] = (),
        system: str | None = None,
        speech: bool = False,
        voice: str = "",
        chunk_ms: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> AsyncJobStream[ChatEvent]:
        request = omni.chat_request(
            messages, images, audio, system, speech, voice, chunk_ms, sampling
        )
        return self._caller.stream(
            self._stub.StreamChat,
            request,
            omni.chat_event,
            timeout=timeout,
            request_id=request_id,
        )

    # --- live sessions: push input with unary calls, read everything from one stream ---

    async def open_session(
        self,
        *,
        mode: str = "chat",
        system_prompt: str = "",
        speech: bool = False,
        voice: str = "",
        chunk_ms: int = 0,
        input_sample_rate: int = 0,
        record: bool = False,
        timeout: float | None = 30.0,
        **sampling: Unpack[SamplingOptions],
    ) -> SessionInfo:
        request = omni.open_session(
            mode, system_prompt, speech, voice, chunk_ms, input_sample_rate, record, sampling
        )
        return await self._unary(
            "OpenSession", request, omni.session_info, timeout, pin_key=_session_id
        )

    async def push(
        self,
        session_id: str,
        sequence: int,
        *,
        audio: AudioLike | None = None,
        image: ImageLike | None = None,
        text: str | None = None,
        end_of_turn: bool = False,
        timeout: float | None = 30.0,
    ) -> PushAck:
        request = omni.push_input(session_id, sequence, audio, image, text, end_of_turn)
        return await self._unary(
            "PushSessionInput", request, omni.push_ack, timeout, pin=session_id
        )

    def session_events(
        self, session_id: str, *, timeout: float | None = None
    ) -> AsyncJobStream[SessionEvent]:
        request = omni_pb2.StreamSessionEventsRequest(session_id=session_id)
        return self._caller.stream(
            self._stub.StreamSessionEvents,
            request,
            omni.session_event,
            timeout=timeout,
            pin=session_id,
        )

    async def pause_session(self, session_id: str, *, timeout: float | None = 30.0) -> SessionState:
        request = omni_pb2.PauseSessionRequest(session_id=session_id)
        return await self._unary(
            "PauseSession", request, omni.state_response, timeout, pin=session_id
        )

    async def resume_session(
        self, session_id: str, *, timeout: float | None = 30.0
    ) -> SessionState:
        request = omni_pb2.ResumeSessionRequest(session_id=session_id)
        return await self._unary(
            "ResumeSession", request, omni.state_response, timeout, pin=session_id
        )

    async def close_session(
        self, session_id: str, *, timeout: float | None = 30.0
    ) -> SessionClosed:
        request = omni_pb2.CloseSessionRequest(session_id=session_id)
        return await self._unary(
            "CloseSession", request, omni.session_closed, timeout, pin=session_id
        )

    # --- reference voices ---

    async def register_voice(
        self, name: str, sample: AudioLike, *, transcript: str = "", timeout: float | None = 60.0
    ) -> Voice:
        request = omni.register_voice(name, sample, transcript)
        return await self._unary("RegisterVoice", request, omni.voice_response, timeout)

    async def list_voices(self, *, timeout: float | None = 10.0) -> list[Voice]:
        request = omni_pb2.ListVoicesRequest()
        return await self._unary("ListVoices", request, omni.voices_response, timeout)

    async def delete_voice(self, voice_id: str, *, timeout: float | None = 10.0) -> None:
        request = omni_pb2.DeleteVoiceRequest(voice_id=voice_id)
        await self._unary("DeleteVoice", request, omni.nothing, timeout)

    # --- plain speech: exactly the given text spoken; audio transcribed (no chat model) ---

    async def synthesize(
        self,
        text: str,
        *,
        voice: str = "",
        format: str = "wav",
        speed: float = 0.0,
        sample_rate: int = 0,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Speech:
        """Speaks `text` verbatim; `format` is one of wav, pcm, flac, mp3, opus (what the
        server encodes: see info().extras["synthesis"]), `speed` 0.25..4 (0: normal)."""
        request = omni.synthesize_request(text, voice, format, speed, sample_rate)
        return await self._unary(
            "Synthesize", request, omni.speech_response, timeout, on_job, request_id
        )

    def stream_synthesize(
        self,
        text: str,
        *,
        voice: str = "",
        format: str = "wav",
        speed: float = 0.0,
        sample_rate: int = 0,
        chunk_ms: int = 0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncJobStream[SpeechEvent]:
        """Speech as it is made: SpeechStarted, then SpeechPiece events whose `data` joined is
        the file, then SpeechCompleted."""
        request = omni.synthesize_request(text, voice, format, speed, sample_rate, chunk_ms)
        return self._caller.stream(
            self._stub.StreamSynthesize,
            request,
            omni.speech_event,
            timeout=timeout,
            request_id=request_id,
        )

    async def transcribe(
        self,
        audio: AudioLike,
        *,
        language: str = "",
        prompt: str = "",
        temperature: float = 0.0,
        timeout: float | None = None,
        on_job: OnJob | None = None,
        request_id: str | None = None,
    ) -> Transcription:
        """The words in a clip (a file path, encoded bytes, a clip or (samples, rate)), with
        timed segments."""
        request = omni.transcribe_request(audio, language, prompt, temperature)
        return await self._unary(
            "Transcribe", request, omni.transcription_response, timeout, on_job, request_id
        )

    def stream_transcribe(
        self,
        audio: AudioLike,
        *,
        language: str = "",
        prompt: str = "",
        temperature: float = 0.0,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncJobStream[TranscriptionEvent]:
        """TranscriptionStarted, a SegmentDone per segment as it is recognized, then
        TranscriptionCompleted with the whole text."""
        request = omni.transcribe_request(audio, language, prompt, temperature)
        return self._caller.stream(
            self._stub.StreamTranscribe,
            request,
            omni.transcription_event,
            timeout=timeout,
            request_id=request_id,
        )


# The same classes under distinct names, for code that imports both flavours side by side.
AsyncT2IClient = T2IClient
AsyncVLClient = VLClient
AsyncVisionClient = VisionClient
AsyncOmniClient = OmniClient


def _session_id(info: SessionInfo) -> str:
    return info.session_id
