"""Keys, prompts and image bytes never reach the logs at the default level: every process's log
(the services, the edge service, Envoy) is searched for random markers sent as API keys, in
prompts, texts and labels, and inside images (a PNG text chunk, and the image bytes as base64
and hex), after successful calls, refused calls (wrong key, bad input), engine failures (whose
stack traces are logged) and HTTP/JSON calls through the edge. The access log must still name
the caller by key id, which shows these are the right logs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from gateway.stack import Stack
from mmserve.common.v1 import chat_pb2, media_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from mmserve.vision.v1 import vision_pb2, vision_pb2_grpc
from tests.reliability.security.conftest import Keys, stack_logs
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class Markers:
    prompt: str
    image_text: str
    image: bytes

    @staticmethod
    def make() -> Markers:
        text = f"imgmark{secrets.token_hex(12)}"
        rng = np.random.default_rng(secrets.randbits(32))
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", text)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", pnginfo=info)
        return Markers(f"promptmark{secrets.token_hex(12)}", text, buffer.getvalue())

    def needles(self, keys: Keys) -> dict[str, str]:
        middle = self.image[len(self.image) // 2 : len(self.image) // 2 + 48]
        return {
            "alice's key": keys.alice,
            "bob's key": keys.bob,
            "a wrong key": keys.wrong,
            "a prompt": self.prompt,
            "image metadata": self.image_text,
            "image bytes (base64)": base64.b64encode(middle).decode(),
            "image bytes (hex)": middle.hex(),
            "image bytes (escaped)": repr(middle[:24])[2:-1],
        }

    def png(self) -> media_pb2.Image:
        return media_pb2.Image(data=self.image, format=media_pb2.IMAGE_FORMAT_PNG)


@pytest.fixture(scope="module")
def markers() -> Markers:
    return Markers.make()


def assert_clean(logs: dict[str, str], needles: dict[str, str]) -> None:
    assert logs, "no logs to search"
    for name, text in logs.items():
        for what, needle in needles.items():
            assert needle not in text, f"{what} found in {name}"


def key_ids(log: str) -> set[str]:
    """The key ids the access log lines (JSON) name."""
    found = set()
    for line in log.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "mmserve.access" and entry.get("key_id"):
                found.add(entry["key_id"])
    return found


async def read_code(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:
    """A stream's status, its events read (an unread stream stalls until its deadline)."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def attempt(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_edge_and_runtime_logs_hold_no_secrets(
    edge: Stack, keys: Keys, markers: Markers
) -> None:
    alice, bob, wrong = Keys.bearer(keys.alice), Keys.bearer(keys.bob), Keys.bearer(keys.wrong)
    prompt = markers.prompt

    def params(text: str, **extra: int) -> t2i_pb2.GenerationParams:
        return t2i_pb2.GenerationParams(prompt=text, num_inference_steps=2, **extra)

    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        ok = t2i_pb2.TextToImageRequest(params=params(prompt))
        codes = [
            await attempt(stub.TextToImage(ok, metadata=alice, timeout=30)),
            await read_code(stub.StreamTextToImage(ok, metadata=bob, timeout=30)),
            await attempt(stub.TextToImage(ok, metadata=wrong, timeout=30)),
            await attempt(stub.TextToImage(ok, timeout=30)),
            await attempt(  # bad input: the field is named, its value is not logged
                stub.TextToImage(
                    t2i_pb2.TextToImageRequest(params=params(prompt, width=1000)),
                    metadata=alice,
                    timeout=30,
                )
            ),
            await attempt(  # the engine raises: a stack trace is logged
                stub.TextToImage(
                    t2i_pb2.TextToImageRequest(params=params(f"fail-at-1 {prompt}")),
                    metadata=alice,
                    timeout=30,
                )
            ),
            await attempt(
                stub.ImageToImage(
                    t2i_pb2.ImageToImageRequest(params=params(prompt), image=markers.png()),
                    metadata=alice,
                    timeout=30,
                )
            ),
        ]
    assert codes[:2] == [grpc.StatusCode.OK, grpc.StatusCode.OK]
    assert codes[2:5] == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [grpc.StatusCode.INVALID_ARGUMENT]
    assert codes[5] == grpc.StatusCode.INTERNAL
    # HTTP/JSON through the transcoder, with the key in a header and the prompt in the body.
    body = json.dumps({"params": {"prompt": prompt, "numInferenceSteps": 1}}).encode()
    url = f"http://{edge.address}/mmserve.t2i.v1.ImageGenerationService/TextToImage"
    assert await asyncio.to_thread(post, url, body, keys.alice) == 200
    assert await asyncio.to_thread(post, url, body, keys.wrong) == 401
    await asyncio.sleep(0.5)  # Envoy writes its access log lines as calls end
    logs = stack_logs(edge)
    assert {"envoy.log", "edge.log", "t2i-0.log"} <= set(logs)
    assert_clean(logs, markers.needles(keys))
    service_log = logs["t2i-0.log"]
    assert {"alice", "bob"} <= key_ids(service_log), "the access log names callers by key id"
    assert "Traceback" in service_log, "the engine failure was logged with its stack trace"


async def test_vision_logs_hold_no_texts_labels_images_or_keys(
    vision: ServerProcess, keys: Keys, markers: Markers
) -> None:
    alice = Keys.bearer(keys.alice)
    async with grpc.aio.insecure_channel(vision.target) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        texts = vision_pb2.EmbedTextsRequest(texts=[markers.prompt])
        images = vision_pb2.EmbedImagesRequest(images=[markers.png()])
        labels = vision_pb2.ClassifyZeroShotRequest(
            images=[markers.png()], labels=[markers.prompt, "a dog"]
        )
        corrupt = vision_pb2.EmbedImagesRequest(
            images=[media_pb2.Image(data=markers.image[: len(markers.image) // 2])]
        )
        codes = [
            await attempt(stub.EmbedTexts(texts, metadata=alice, timeout=60)),
            await attempt(stub.EmbedImages(images, metadata=alice, timeout=60)),
            await attempt(stub.ClassifyZeroShot(labels, metadata=alice, timeout=60)),
            await attempt(stub.EmbedImages(corrupt, metadata=alice, timeout=60)),
            await attempt(stub.EmbedTexts(texts, metadata=Keys.bearer(keys.wrong), timeout=60)),
        ]
    assert codes == [grpc.StatusCode.OK] * 3 + [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
    ]
    log = vision.log()
    assert "alice" in key_ids(log)
    assert_clean({"vision": log}, markers.needles(keys))


async def test_omni_logs_hold_no_prompts_session_input_or_keys(
    omni: ServerProcess, keys: Keys, markers: Markers
) -> None:
    bob = Keys.bearer(keys.bob)
    async with grpc.aio.insecure_channel(omni.target) as channel:
        stub = omni_pb2_grpc.OmniServiceStub(channel)
        sampling = chat_pb2.SamplingParams(max_new_tokens=4)
        chat = omni_pb2.ChatRequest(
            messages=[
                omni_pb2.ChatMessage(
                    role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text=markers.prompt)]
                )
            ],
            sampling=sampling,
        )
        with_image = omni_pb2.ChatRequest(
            messages=[
                omni_pb2.ChatMessage(
                    role=chat_pb2.ROLE_USER,
                    content=[
                        omni_pb2.ContentPart(image=markers.png()),
                        omni_pb2.ContentPart(text=markers.prompt),
                    ],
                )
            ],
            sampling=sampling,
        )
        assert await attempt(stub.Chat(chat, metadata=bob, timeout=120)) == grpc.StatusCode.OK
        stream = stub.StreamChat(chat, metadata=bob, timeout=120)
        assert await read_code(stream) == grpc.StatusCode.OK
        # SmolLM2 takes no images: refused, and the image is not logged either way.
        await attempt(stub.Chat(with_image, metadata=bob, timeout=120))
        wrong = Keys.bearer(keys.wrong)
        assert await attempt(stub.Chat(chat, metadata=wrong, timeout=60)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        opened = await stub.OpenSession(
            omni_pb2.OpenSessionRequest(system_prompt=markers.prompt, sampling=sampling),
            metadata=bob,
            timeout=60,
        )
        await stub.PushSessionInput(
            omni_pb2.PushSessionInputRequest(
                session_id=opened.session_id, sequence=0, text=markers.prompt, end_of_turn=True
            ),
            metadata=bob,
            timeout=60,
        )
        await stub.CloseSession(
            omni_pb2.CloseSessionRequest(session_id=opened.session_id), metadata=bob, timeout=60
        )
    log = omni.log()
    assert "bob" in key_ids(log)
    assert_clean({"omni": log}, markers.needles(keys))


def post(url: str, body: bytes, key: str) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
