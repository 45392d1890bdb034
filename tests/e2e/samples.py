"""One small request per capability for the real services behind the edge, shared by the
grpcurl, HTTP/JSON and Python-stub tests (as protobuf JSON: each tool takes it as is)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from gateway.catalog import CapabilitySpec, capability


def png(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 80, 40)).save(buffer, "PNG")
    return buffer.getvalue()


PNG_B64 = base64.b64encode(png()).decode()
HELLO = [{"role": "ROLE_USER", "content": [{"text": "Say hello."}]}]


@dataclass(frozen=True)
class Sample:
    capability: str
    unary: str  # method name
    request: dict[str, Any]  # protobuf JSON
    result_field: str  # a field every unary reply has (JSON name)
    stream: str | None = None  # streaming twin taking the same request
    final_event: str | None = None  # the oneof case that ends the stream
    bad_request: dict[str, Any] | None = None
    bad_field: str = ""

    @property
    def spec(self) -> CapabilitySpec:
        return capability(self.capability)


SAMPLES: dict[str, Sample] = {
    s.capability: s
    for s in (
        Sample(
            "t2i",
            "TextToImage",
            {"params": {"prompt": "a red fox", "numInferenceSteps": 2, "width": 64, "height": 64}},
            "result",
            "StreamTextToImage",
            "result",
            {"params": {"prompt": "a red fox", "width": 1000000}},
            "params.width",
        ),
        Sample(
            "vl",
            "Chat",
            {
                "messages": [
                    {
                        "role": "ROLE_USER",
                        "content": [{"image": {"data": PNG_B64}}, {"text": "What is this?"}],
                    }
                ],
                "sampling": {"maxNewTokens": 4},
            },
            "text",
            "StreamChat",
            "completed",
        ),
        Sample(
            "vision",
            "EmbedImages",
            {"images": [{"data": PNG_B64}]},
            "embeddings",
        ),
        Sample(
            "omni",
            "Chat",
            {"messages": HELLO, "sampling": {"maxNewTokens": 4}},
            "text",
            "StreamChat",
            "completed",
        ),
    )
}
