"""A valid request for every RPC, the starting point of one-field mutations (mutations.py).

A base is built again for every call when it spends something (a session to pause, a voice to
delete); `cleanup` gives back what a call took (an opened session, a registered voice), so a
long run never fills the server's session or voice slots. RPCs without an entry here still get
mutated, starting from the empty request; `test_every_rpc_has_a_base` lists them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from PIL import Image

from mmserve.common.v1 import job_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2
from mmserve.t2i.v1 import t2i_pb2
from mmserve.vision.v1 import vision_pb2
from services.runtime.images import encode_image
from tests.reliability.inputs.corpus import sound_file, tone, valid_audio, valid_images
from tests.reliability.inputs.fleet import Outcome, Rpc, Served
from tests.reliability.inputs.protofuzz import message_class
from tests.reliability.inputs.slots import normal_requests

OK = grpc.StatusCode.OK


@dataclass(frozen=True)
class Base:
    build: Callable[[Served], Message]
    fresh: bool = False  # build again for every call: it spends what it holds
    max_events: int | None = None  # streams that only end when told: read this many events
    expect: frozenset[grpc.StatusCode] = frozenset({OK})  # what the base itself ends with


def _fixed(message: Message) -> Callable[[Served], Message]:
    return lambda _served: message


def _image() -> media_pb2.Image:
    return valid_images()[0]


def _voice_sample() -> media_pb2.Audio:
    # 3.5 s: a reference voice must be 3..30 s long.
    return media_pb2.Audio(data=sound_file(tone(3.5, 16000), 16000, "WAV", "PCM_16"))


def _normal(capability: str, name: str) -> Message:
    return dict(normal_requests(capability))[name]


def job_id(served: Served) -> str:
    """The id of a finished job of this server (a normal request's)."""
    ids = served.pools.get("job_id")
    if not ids:
        name, request = normal_requests(served.capability)[0]
        outcome = served.call(name, request)
        served.pools["job_id"] = [outcome.metadata("mmserve-job-id") or "missing"]
        ids = served.pools["job_id"]
    return ids[-1]


def open_session(served: Served, paused: bool = False) -> str:
    opened = served.call("OpenSession", omni_pb2.OpenSessionRequest())
    assert opened.code is OK, f"opening a session for a base request: {opened}"
    session_id = str(opened.responses[0].session_id)
    served.pools.setdefault("open_session", []).append(session_id)
    if paused:
        served.call("PauseSession", omni_pb2.PauseSessionRequest(session_id=session_id))
    return session_id


def _voice_id(served: Served) -> str:
    registered = served.call(
        "RegisterVoice", omni_pb2.RegisterVoiceRequest(name="to delete", sample=_voice_sample())
    )
    assert registered.code is OK, f"registering a voice for a base request: {registered}"
    voice_id = str(registered.responses[0].voice.voice_id)
    served.pools.setdefault("registered_voice", []).append(voice_id)
    return voice_id


class PushState:
    """One live session for PushSessionInput bases; the sequence follows the acks."""

    def __init__(self) -> None:
        self.session_id = ""
        self.sequence = 0

    def build(self, served: Served) -> Message:
        if not self.session_id:
            self.session_id = open_session(served)
        return omni_pb2.PushSessionInputRequest(
            session_id=self.session_id, sequence=self.sequence, text="hello"
        )

    def after(self, outcome: Outcome) -> None:
        if outcome.rpc.name == "PushSessionInput" and outcome.code is OK:
            self.sequence = outcome.responses[0].acked_sequence + 1


def _vision() -> dict[str, Base]:
    image = _image()
    other = vision_pb2.VisionInput(image=valid_images()[1])
    return {
        "EmbedImages": Base(_fixed(_normal("vision", "EmbedImages"))),
        "EmbedTexts": Base(_fixed(_normal("vision", "EmbedTexts"))),
        "ComputeSimilarity": Base(
            _fixed(
                vision_pb2.ComputeSimilarityRequest(
                    queries=[vision_pb2.VisionInput(image=image)],
                    candidates=[vision_pb2.VisionInput(text="a cat"), other],
                )
            )
        ),
        "ClassifyZeroShot": Base(
            _fixed(vision_pb2.ClassifyZeroShotRequest(images=[image], labels=["cat", "dog"]))
        ),
        "Rank": Base(
            _fixed(
                vision_pb2.RankRequest(
                    query=vision_pb2.VisionInput(image=image),
                    candidates=[vision_pb2.VisionInput(text="a cat"), other],
                )
            )
        ),
        "StreamImageEmbeddings": Base(
            _fixed(message_class(_vision_input("StreamImageEmbeddings"))(images=[image]))
        ),
        **_collections(),
    }


def _vision_input(rpc: str) -> Descriptor:
    service = vision_pb2.DESCRIPTOR.services_by_name["VisionService"]
    return service.methods_by_name[rpc].input_type


COLLECTION = "fuzz"


def collection(served: Served) -> str:
    """A collection holding item "a" (created once per server)."""
    if COLLECTION not in served.pools.get("collection", []):
        made = served.call(
            "CreateCollection", _request("CreateCollection", name=COLLECTION, exist_ok=True)
        )
        assert made.code is OK, f"creating a collection for base requests: {made}"
        served.pools["collection"] = [COLLECTION]
    upsert = _request("UpsertItems", collection=COLLECTION)
    upsert.items.add(id="a", text="a cat").metadata["kind"] = "animal"
    served.call("UpsertItems", upsert)
    return COLLECTION


def _request(rpc: str, **fields: object) -> Message:
    return message_class(_vision_input(rpc))(**fields)


def _doomed_collection(served: Served) -> Message:
    name = f"doomed-{len(served.pools.setdefault('doomed', []))}"
    served.pools["doomed"].append(name)
    served.call("CreateCollection", _request("CreateCollection", name=name, exist_ok=True))
    return _request("DeleteCollection", name=name)


def _collections() -> dict[str, Base]:
    if (
        "CreateCollection"
        not in vision_pb2.DESCRIPTOR.services_by_name["VisionService"].methods_by_name
    ):
        return {}

    def upsert(served: Served) -> Message:
        request = _request("UpsertItems", collection=collection(served))
        item = request.items.add(id="b", text="a dog")
        item.metadata["kind"] = "animal"
        return request

    def search(served: Served) -> Message:
        request = _request("Search", collection=collection(served), text="a cat", top_k=3)
        request.filter["kind"] = "animal"
        return request

    return {
        "CreateCollection": Base(
            _fixed(_request("CreateCollection", name="fuzz-made", exist_ok=True))
        ),
        "DeleteCollection": Base(_doomed_collection, fresh=True),
        "ListCollections": Base(_fixed(_request("ListCollections"))),
        "UpsertItems": Base(upsert),
        "DeleteItems": Base(
            lambda s: _request("DeleteItems", collection=collection(s), ids=["a"]), fresh=True
        ),
        "GetItems": Base(lambda s: _request("GetItems", collection=collection(s), ids=["a"])),
        "Search": Base(search),
    }


def _t2i() -> dict[str, Base]:
    text = _normal("t2i", "TextToImage")
    image = t2i_pb2.ImageToImageRequest(
        params=t2i_pb2.GenerationParams(
            prompt="a red house", width=64, height=64, num_inference_steps=2, seed=1
        ),
        image=_image(),
        strength=0.8,
    )
    size = Image.open(io.BytesIO(image.image.data)).size
    white = media_pb2.Image(data=encode_image(Image.new("L", size, 255), "PNG"))
    inpaint = t2i_pb2.InpaintImageRequest(
        params=image.params, image=image.image, mask=white, strength=0.8
    )
    edit = t2i_pb2.EditImageRequest(params=image.params, image=image.image)
    # The fleet's Stable Diffusion inpaints and has no instruction-edit pipeline.
    no_edits = frozenset({grpc.StatusCode.FAILED_PRECONDITION})
    return {
        "TextToImage": Base(_fixed(text)),
        "StreamTextToImage": Base(_fixed(text)),
        "ImageToImage": Base(_fixed(image)),
        "StreamImageToImage": Base(_fixed(image)),
        "InpaintImage": Base(_fixed(inpaint)),
        "StreamInpaintImage": Base(_fixed(inpaint)),
        "EditImage": Base(_fixed(edit), expect=no_edits),
        "StreamEditImage": Base(_fixed(edit), expect=no_edits),
    }


def _vl() -> dict[str, Base]:
    chat = _normal("vl", "Chat")
    return {"Chat": Base(_fixed(chat)), "StreamChat": Base(_fixed(chat))}


def _omni(push: PushState) -> dict[str, Base]:
    chat = _normal("omni", "Chat")
    speech = omni_pb2.SynthesizeRequest(text="Hello there.")
    heard = omni_pb2.TranscribeRequest(audio=valid_audio()[0])
    return {
        "Chat": Base(_fixed(chat)),
        "StreamChat": Base(_fixed(chat)),
        "OpenSession": Base(_fixed(omni_pb2.OpenSessionRequest())),
        "PushSessionInput": Base(push.build, fresh=True),
        "StreamSessionEvents": Base(
            lambda s: omni_pb2.StreamSessionEventsRequest(session_id=open_session(s)),
            fresh=True,
            max_events=1,
        ),
        "PauseSession": Base(
            lambda s: omni_pb2.PauseSessionRequest(session_id=open_session(s)), fresh=True
        ),
        "ResumeSession": Base(
            lambda s: omni_pb2.ResumeSessionRequest(session_id=open_session(s, paused=True)),
            fresh=True,
        ),
        "CloseSession": Base(
            lambda s: omni_pb2.CloseSessionRequest(session_id=open_session(s)), fresh=True
        ),
        "RegisterVoice": Base(
            _fixed(omni_pb2.RegisterVoiceRequest(name="fuzz voice", sample=_voice_sample()))
        ),
        "ListVoices": Base(_fixed(omni_pb2.ListVoicesRequest())),
        "DeleteVoice": Base(
            lambda s: omni_pb2.DeleteVoiceRequest(voice_id=_voice_id(s)), fresh=True
        ),
        "Synthesize": Base(_fixed(speech)),
        "StreamSynthesize": Base(_fixed(speech)),
        "Transcribe": Base(_fixed(heard)),
        "StreamTranscribe": Base(_fixed(heard)),
        "ListRecordings": Base(_fixed(omni_pb2.ListRecordingsRequest())),
        # Recordings are off on the test servers: a valid request finds nothing.
        "GetRecording": Base(
            lambda s: omni_pb2.GetRecordingRequest(session_id=open_session(s)),
            fresh=True,
            expect=frozenset({grpc.StatusCode.NOT_FOUND}),
        ),
    }


def _jobs() -> dict[str, Base]:
    return {
        "GetJob": Base(lambda s: job_pb2.GetJobRequest(job_id=job_id(s))),
        "CancelJob": Base(lambda s: job_pb2.CancelJobRequest(job_id=job_id(s))),
    }


PUSH = PushState()
_BY_CAPABILITY: dict[str, dict[str, Base]] = {
    "vision": _vision(),
    "t2i": _t2i(),
    "vl": _vl(),
    "omni": _omni(PUSH),
}


def base_for(rpc: Rpc) -> Base | None:
    """The RPC's base request: its own, the shared job RPCs', GetModelInfo's empty request."""
    own = _BY_CAPABILITY[rpc.capability].get(rpc.name)
    if own is not None:
        return own
    if rpc.name in ("GetJob", "CancelJob"):
        return _jobs()[rpc.name]
    if rpc.name == "GetModelInfo":
        return Base(lambda s: rpc_message(rpc))
    return None


def rpc_message(rpc: Rpc) -> Message:
    return message_class(rpc.input)()


def cleanup(served: Served, outcome: Outcome) -> None:
    """Gives back what a call took: sessions it or its base opened, voices registered."""
    PUSH.after(outcome)
    if outcome.code is OK and outcome.responses:
        reply = outcome.responses[0]
        if outcome.rpc.name == "OpenSession":
            served.pools.setdefault("open_session", []).append(reply.session_id)
        elif outcome.rpc.name == "RegisterVoice":
            served.pools.setdefault("registered_voice", []).append(reply.voice.voice_id)
    for session_id in served.pools.pop("open_session", []):
        if session_id != PUSH.session_id:
            served.call("CloseSession", omni_pb2.CloseSessionRequest(session_id=session_id))
    for voice_id in served.pools.pop("registered_voice", []):
        served.call("DeleteVoice", omni_pb2.DeleteVoiceRequest(voice_id=voice_id))


def close_push_session(served: Served) -> None:
    if PUSH.session_id:
        served.call("CloseSession", omni_pb2.CloseSessionRequest(session_id=PUSH.session_id))
    PUSH.session_id, PUSH.sequence = "", 0
