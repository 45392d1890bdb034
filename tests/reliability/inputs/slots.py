"""Where media go in each RPC's request, and the normal requests that must keep working.

A slot is one place an RPC takes an image or an audio clip, with a request that is valid
around it, so a refusal can only be about the media: `build(media)` puts an Image or Audio
message there and `field` is the path a BadRequest violation must name. `media_fields` walks
the descriptors, and a test checks that every RPC taking media has a slot here, so a new RPC
that takes an image cannot slip past the hostile-file tests.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from PIL import Image as PILImage

from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.t2i.v1 import t2i_pb2
from mmserve.vision.v1 import vision_pb2
from mmserve.vl.v1 import vl_pb2
from services.runtime.images import encode_image
from tests.reliability.inputs.corpus import CHAT, SESSION, VOICE, valid_images
from tests.reliability.inputs.fleet import Rpc, Served, all_rpcs
from tests.reliability.inputs.protofuzz import message_class

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
    prepare: Callable[[Served], None] | None = None  # what must exist first (a collection)
    # A readable file may still be refused for what it shows, naming the field (a mask with
    # nothing to repaint): good files may then be refused as well as accepted.
    judges_content: bool = False

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


HOSTILE_COLLECTION = "hostile-media"


def _collection(served: Served) -> None:
    request = _vision_request("CreateCollection", name=HOSTILE_COLLECTION, exist_ok=True)
    made = served.call("CreateCollection", request)
    assert made.code.name == "OK", str(made)


def _vision_request(rpc: str, **fields: object) -> Message:
    method = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].methods_by_name[rpc]
    return message_class(method.input_type)(**fields)


def streamed_embedding_rpcs() -> list[str]:
    """Vision's server-streaming RPCs that embed a list of images (the bulk embedding)."""
    service = vision_pb2.DESCRIPTOR.services_by_name["VisionService"]
    return [
        m.name
        for m in service.methods
        if m.server_streaming
        and "images" in m.input_type.fields_by_name
        and m.input_type.fields_by_name["images"].message_type.full_name == IMAGE
    ]


def _vision_store_slots() -> list[Slot]:
    """Streamed embedding and the collections, where the service has them."""
    methods = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].methods_by_name
    slots = []
    for name in streamed_embedding_rpcs():
        slots.append(
            Slot(
                "vision",
                name,
                IMAGE,
                "images[0]",
                lambda m, name=name: _vision_request(name, images=[m]),  # type: ignore[misc]
            )
        )
    if "UpsertItems" in methods:

        def upsert(media: Media) -> Message:
            request = _vision_request("UpsertItems", collection=HOSTILE_COLLECTION)
            request.items.add(id="hostile").image.CopyFrom(media)
            return request

        slots.append(
            Slot("vision", "UpsertItems", IMAGE, "items[0].image", upsert, prepare=_collection)
        )
        slots.append(
            Slot(
                "vision",
                "Search",
                IMAGE,
                "image",
                lambda m: _vision_request("Search", collection=HOSTILE_COLLECTION, image=m),
                prepare=_collection,
            )
        )
    return slots


def _t2i_request(image: Media) -> t2i_pb2.ImageToImageRequest:
    return t2i_pb2.ImageToImageRequest(
        params=t2i_pb2.GenerationParams(prompt="a red house", num_inference_steps=2, seed=1),
        image=image,
    )


# A companion image for a hostile one is made at its size only when that is cheap to make; a
# larger (or unreadable) input is refused for itself whatever the companion's size.
_COMPANION_MAX_PIXELS = 1 << 20
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}


def _size_of(media: Media) -> tuple[int, int]:
    """The decoded size `media` claims in its header (no pixels decoded); 32x32 if none."""
    try:
        with PILImage.open(io.BytesIO(media.data)) as opened:
            width, height = opened.size
            # The service turns EXIF-rotated photos upright: so is the companion.
            if opened.getexif().get(_EXIF_ORIENTATION, 1) in _QUARTER_TURNS:
                width, height = height, width
    except Exception:
        return 32, 32
    if not 0 < width * height <= _COMPANION_MAX_PIXELS:
        return 32, 32
    return width, height


def _companion(media: Media, mode: str, color: int | tuple[int, int, int]) -> media_pb2.Image:
    image = PILImage.new(mode, _size_of(media), color)  # type: ignore[arg-type]
    return media_pb2.Image(data=encode_image(image, "PNG"))


def _inpaint_image(image: Media) -> t2i_pb2.InpaintImageRequest:
    """The image slot of InpaintImage: an all-white mask of the image's size."""
    return t2i_pb2.InpaintImageRequest(
        params=t2i_pb2.GenerationParams(prompt="a red house", num_inference_steps=2, seed=1),
        image=image,
        mask=_companion(image, "L", 255),
    )


def _inpaint_mask(mask: Media) -> t2i_pb2.InpaintImageRequest:
    """The mask slot of InpaintImage: a grey image of the mask's size."""
    return t2i_pb2.InpaintImageRequest(
        params=t2i_pb2.GenerationParams(prompt="a red house", num_inference_steps=2, seed=1),
        image=_companion(mask, "RGB", (120, 120, 120)),
        mask=mask,
    )


def _edit(image: Media) -> t2i_pb2.EditImageRequest:
    return t2i_pb2.EditImageRequest(
        params=t2i_pb2.GenerationParams(prompt="make it red", num_inference_steps=2, seed=1),
        image=image,
    )


NO_EDITS = "the fleet's t2i model has no edit pipeline: EditImage reads no image"


def refused_before_reading(served: Served, slot: Slot) -> bool:
    """EditImage on a model without an edit pipeline answers FAILED_PRECONDITION before it
    reads its image (the fleet's Stable Diffusion has none; tests/t2i covers edit inputs)."""
    if slot.capability != "t2i" or not slot.rpc_name.endswith("EditImage"):
        return False
    info = served.call("GetModelInfo", t2i_pb2.GetModelInfoRequest())
    return not info.responses[0].limits.supports_image_editing


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
    slots = _vision_slots() + _vision_store_slots()
    for rpc in ("ImageToImage", "StreamImageToImage"):
        slots.append(Slot("t2i", rpc, IMAGE, "image", _t2i_request))
    for rpc in ("InpaintImage", "StreamInpaintImage"):
        slots.append(Slot("t2i", rpc, IMAGE, "image", _inpaint_image))
        slots.append(Slot("t2i", rpc, IMAGE, "mask", _inpaint_mask, judges_content=True))
    for rpc in ("EditImage", "StreamEditImage"):
        slots.append(Slot("t2i", rpc, IMAGE, "image", _edit))
    for rpc in ("Chat", "StreamChat"):
        slots.append(Slot("vl", rpc, IMAGE, "messages[0].content[1].image", _vl_chat))
        slots.append(Slot("omni", rpc, IMAGE, "messages[0].content[1].image", _omni_chat))
        slots.append(Slot("omni", rpc, AUDIO, "messages[0].content[1].audio", _omni_chat, use=CHAT))
    slots.append(Slot("omni", "PushSessionInput", IMAGE, "image", _push, needs_session=True))
    slots.append(
        Slot("omni", "PushSessionInput", AUDIO, "audio", _push, use=SESSION, needs_session=True)
    )
    if "Transcribe" in omni_pb2.DESCRIPTOR.services_by_name["OmniService"].methods_by_name:
        for rpc in ("Transcribe", "StreamTranscribe"):
            slots.append(
                Slot(
                    "omni",
                    rpc,
                    AUDIO,
                    "audio",
                    lambda m: omni_pb2.TranscribeRequest(audio=m),  # type: ignore[arg-type]
                    use=CHAT,  # the servers give Transcribe chat's clip length limit
                )
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
