"""Python SDK for mmserve: typed sync and asyncio clients for the t2i, vl, vision and omni
services, over the generated gRPC stubs (package `mmserve`).

    from mmserve_client import T2IClient, Progress, Generation

    with T2IClient("127.0.0.1:50051", api_key="...") as t2i:
        with t2i.stream_generate("a red fox", steps=20) as stream:
            for event in stream:
                if isinstance(event, Progress):
                    print(event.step, "/", event.total)
                elif isinstance(event, Generation):
                    event.images[0].save("fox.png")

The asyncio clients live in `mmserve_client.aio` under the same names.
"""

from __future__ import annotations

from . import aio
from .audio import AudioClip
from .clients import Client, OmniClient, T2IClient, VisionClient, VLClient
from .connection import Connection
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    MMServeError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .events import (
    Accepted,
    AudioChunk,
    Completed,
    Heartbeat,
    Progress,
    Queued,
    SessionEvent,
    SessionStateChanged,
    TextDelta,
    Transcript,
    TurnCompleted,
)
from .images import EncodedImage
from .results import (
    ChatReply,
    Classifications,
    Embeddings,
    FinishReason,
    Generation,
    Job,
    JobState,
    LabelScore,
    ModelInfo,
    PushAck,
    Ranked,
    Ranking,
    ServiceInfo,
    SessionClosed,
    SessionInfo,
    SessionState,
    Similarity,
    Usage,
    Voice,
)
from .retry import RetryPolicy
from .search import (
    Collection,
    EmbeddedChunk,
    EmbedDone,
    EmbedProgress,
    SearchHit,
    SearchResult,
    StoredItem,
)
from .speech import (
    Segment,
    SegmentDone,
    Speech,
    SpeechCompleted,
    SpeechPiece,
    SpeechStarted,
    Transcription,
    TranscriptionCompleted,
    TranscriptionStarted,
)
from .streams import AsyncJobStream, JobStream
from .wire.common import Message, SamplingOptions
from .wire.t2i import GenerateOptions

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "Accepted",
    "AlreadyExists",
    "AsyncJobStream",
    "AudioChunk",
    "AudioClip",
    "Cancelled",
    "ChatReply",
    "Classifications",
    "Client",
    "Collection",
    "Completed",
    "Connection",
    "DataLoss",
    "DeadlineExceeded",
    "EmbedDone",
    "EmbedProgress",
    "EmbeddedChunk",
    "Embeddings",
    "EncodedImage",
    "FailedPrecondition",
    "FieldViolation",
    "FinishReason",
    "GenerateOptions",
    "Generation",
    "Heartbeat",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobState",
    "JobStream",
    "LabelScore",
    "MMServeError",
    "Message",
    "ModelInfo",
    "NotFound",
    "OmniClient",
    "OutOfRange",
    "PermissionDenied",
    "Progress",
    "PushAck",
    "Queued",
    "Ranked",
    "Ranking",
    "ResourceExhausted",
    "RetryPolicy",
    "SamplingOptions",
    "SearchHit",
    "SearchResult",
    "Segment",
    "SegmentDone",
    "ServiceInfo",
    "SessionClosed",
    "SessionEvent",
    "SessionInfo",
    "SessionState",
    "SessionStateChanged",
    "Similarity",
    "Speech",
    "SpeechCompleted",
    "SpeechPiece",
    "SpeechStarted",
    "StoredItem",
    "T2IClient",
    "TextDelta",
    "Transcript",
    "Transcription",
    "TranscriptionCompleted",
    "TranscriptionStarted",
    "TurnCompleted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "VLClient",
    "VisionClient",
    "Voice",
    "aio",
]
