"""Where media go in each RPC's request, and the normal requests that must keep working.

A slot is one place an RPC takes an image or an audio clip, with a request that is valid
around it, so a refusal can only be about the media: `build(media)` puts an Image or Audio
message there and `field` is the path a BadRequest violation must name. `media_fields` walks
the descriptors, and a test checks that every RPC taking media has a slot here, so a new RPC
that takes an image cannot slip past the hostile-file tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.t2i.v1 import t2i_pb2
from mmserve.vision.v1 import vision_pb2
from mmserve.vl.v1 import vl_pb2
from tests.reliability.inputs.corpus import CHAT, SESSION, VOICE, valid_images
from tests.reliability.inputs.fleet import Rpc, all_rpcs

IMAGE, AUDIO = "mmserve.common.v1.Image", "mmserve.common.v1.Audio"
Media: TypeAlias = media_pb2.Image | media_pb2.Audio


def media_fields(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> set[str]:
    """The media message types (IMAGE, AUDIO) reachable from `descriptor`."""
    found: set[str] = set()
    for f in descriptor.fields:
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        name = f.message_type.full_name
        if name in (IMAGE, AUDIO):
            found.add(name)
        elif name not in seen:
            found |= media_fields(f.message_type, seen | {descriptor.full_name})
    return found


@dataclass(frozen=True)
class Slot:
    """One media input of one RPC."""

    capability: str
    rpc_name: str
    kind: str  # IMAGE or AUDIO
    field: str  # the request path of the media message, e.g. "images[0]"
    build: Callable[[Media], Message]
    use: str = CHAT  # for audio: which limits apply (corpus.CHAT, SESSION, VOICE)
    needs_session: bool = False  # PushSessionInput: the test supplies a live session id

    def __str__(self) -> str:
        return f"{self.capability}.{self.rpc_name}:{self.field}"


def _vision_slots() -> list[Slot]:
    other = vision_pb2.VisionInput(image=valid_images()[0])
    return [
        Slot(
            "vision",
            "EmbedImages",
            IMAGE,
            "images[0]",
            lambda m: vision_pb2.EmbedImagesRequest(images=[m]),
        ),
        Slot(
            "vision",
            "ComputeSimilarity",
            IMAGE,
            "queries[0].image",
            lambda m: vision_pb2.ComputeSimilarityRequest(
                queries=[vision_pb2.VisionInput(image=m)],
                candidates=[vision_pb2.VisionInput(text="a cat"), other],
            ),
        ),
        Slot(
            "vision",
            "ClassifyZeroShot",
            IMAGE,
            "images[0]",
            lambda m: vision_pb2.ClassifyZeroShotRequest(images=[m], labels=["cat", "dog"]),
        ),
        Slot(
            "vision",
            "Rank",
            IMAGE,
            "query.image",
            lambda m: vision_pb2.RankRequest(
                query=vision_pb2.VisionInput(image=m),
                candidates=[vision_pb2.VisionInput(text="a cat"), other],
            ),
        ),
    ]


def _t2i_request(image: Media) -> t2i_pb2.ImageToImageRequest:
    return t2i_pb2.ImageToImageRequest(
        params=t2i_pb2.GenerationParams(prompt="a red house", num_inference_steps=2, seed=1),
        image=image,
    )


def _vl_chat(image: Media) -> vl_pb2.ChatRequest:
    return vl_pb2.ChatRequest(
        messages=[
            vl_pb2.ChatMessage(
                role=chat_pb2.ROLE_USER,
                content=[vl_pb2.ContentPart(text="What is this?"), vl_pb2.ContentPart(image=image)],
            )
        ],
        sampling=chat_pb2.SamplingParams(max_new_tokens=2),
    )


def _omni_chat(media: Media) -> omni_pb2.ChatRequest:
    part = (
        omni_pb2.ContentPart(image=media)
        if isinstance(media, media_pb2.Image)
        else omni_pb2.ContentPart(audio=media)
    )
    return omni_pb2.ChatRequest(
        messages=[
            omni_pb2.ChatMessage(
                role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Hi."), part]
            )
        ],
        sampling=chat_pb2.SamplingParams(max_new_tokens=2),
    )


def _push(media: Media) -> omni_pb2.PushSessionInputRequest:
    # session_id and sequence are filled in by the test, which holds the live session.
    if isinstance(media, media_pb2.Image):
        return omni_pb2.PushSessionInputRequest(image=media)
    return omni_pb2.PushSessionInputRequest(audio=media)


def all_slots() -> list[Slot]:
    slots = _vision_slots()
    for rpc in ("ImageToImage", "StreamImageToImage"):
        slots.append(Slot("t2i", rpc, IMAGE, "image", _t2i_request))
    for rpc in ("Chat", "StreamChat"):
        slots.append(Slot("vl", rpc, IMAGE, "messages[0].content[1].image", _vl_chat))
        slots.append(Slot("omni", rpc, IMAGE, "messages[0].content[1].image", _omni_chat))
        slots.append(Slot("omni", rpc, AUDIO, "messages[0].content[1].audio", _omni_chat, use=CHAT))
    slots.append(Slot("omni", "PushSessionInput", IMAGE, "image", _push, needs_session=True))
    slots.append(
        Slot("omni", "PushSessionInput", AUDIO, "audio", _push, use=SESSION, needs_session=True)
    )
    slots.append(
        Slot(
            "omni",
            "RegisterVoice",
            AUDIO,
            "sample",
            lambda m: omni_pb2.RegisterVoiceRequest(name="hostile", sample=m),
            use=VOICE,
        )
    )
    return slots


def rpcs_taking_media() -> list[tuple[Rpc, str]]:
    return [(rpc, kind) for rpc in all_rpcs() for kind in sorted(media_fields(rpc.input))]


# ---------------------------------------------------------------------------------------------
# Normal requests: after every batch of bad input, these must still succeed.


def normal_requests(capability: str) -> list[tuple[str, Message]]:
    image = valid_images()[0]
    if capability == "vision":
        return [
            ("EmbedImages", vision_pb2.EmbedImagesRequest(images=[image])),
            ("EmbedTexts", vision_pb2.EmbedTextsRequest(texts=["a photo of a cat"])),
        ]
    if capability == "t2i":
        params = t2i_pb2.GenerationParams(
            prompt="a red bicycle", width=64, height=64, num_inference_steps=2, seed=7
        )
        return [("TextToImage", t2i_pb2.TextToImageRequest(params=params))]
    if capability == "vl":
        return [("Chat", _vl_chat(image))]
    if capability == "omni":
        chat = omni_pb2.ChatRequest(
            messages=[
                omni_pb2.ChatMessage(
                    role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Say hi.")]
                )
            ],
            sampling=chat_pb2.SamplingParams(max_new_tokens=2),
        )
        return [("Chat", chat)]
    raise ValueError(capability)
