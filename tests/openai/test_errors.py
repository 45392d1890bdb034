"""Keys, full queues, deadlines and disconnects through /v1/, against the sleepy t2i service
(0.3 s per step, queue of one, an API key)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import httpx2 as httpx
import openai
import pytest

from gateway.stack import Stack
from mmserve.common.v1 import job_pb2
from mmserve.t2i.v1 import t2i_pb2_grpc
from tests.openai.conftest import API_KEY, client_for


@pytest.fixture
def stack(sleepy_openai_stack: Stack) -> Iterator[Stack]:
    yield sleepy_openai_stack
    _wait_idle(sleepy_openai_stack)


def _wait_idle(stack: Stack) -> None:
    """Until a one-step job is accepted again (earlier tests' jobs ended)."""
    with client_for(stack, API_KEY) as client:
        for _ in range(100):
            try:
                client.images.generate(
                    model="t2i", prompt="idle", extra_body={"num_inference_steps": 1}
                )
                return
            except openai.RateLimitError:
                time.sleep(0.2)


def _generate(stack: Stack, steps: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{stack.openai_url}/images/generations",
        json={"model": "t2i", "prompt": "a fox", "num_inference_steps": steps},
        headers={"authorization": f"Bearer {API_KEY}", **(headers or {})},
        timeout=60,
    )


def test_bad_key_is_401(stack: Stack) -> None:
    with client_for(stack, "wrong-key") as client, pytest.raises(openai.AuthenticationError) as err:
        client.images.generate(model="t2i", prompt="a fox")
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with client_for(stack, API_KEY) as client:
        reply = client.images.generate(model="t2i", prompt="a fox")
        assert reply.data


def test_full_queue_is_429_with_retry_after(stack: Stack) -> None:
    # One job running, one queued (the queue holds one): the next is refused.
    busy = [threading.Thread(target=_generate, args=(stack, 8)) for _ in range(2)]
    for thread in busy:
        thread.start()
        time.sleep(0.4)
    try:
        with client_for(stack, API_KEY) as client:
            with pytest.raises(openai.RateLimitError) as err:
                client.images.generate(model="t2i", prompt="one more")
        assert err.value.status_code == 429
        retry_after = err.value.response.headers["retry-after"]
        assert int(retry_after) >= 1
        assert err.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    finally:
        for thread in busy:
            thread.join(30)


def test_deadline_is_504(stack: Stack) -> None:
    reply = _generate(stack, 20, {"x-request-timeout": "0.5"})
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "deadline_exceeded"


def test_disconnect_cancels_the_image_job(stack: Stack) -> None:
    body = {"model": "t2i", "prompt": "slow", "stream": True, "num_inference_steps": 30}
    headers = {"authorization": f"Bearer {API_KEY}"}
    url = f"{stack.openai_url}/images/generations"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as reply:
        assert reply.status_code == 200
        job_id = reply.headers["mmserve-job-id"]
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    with grpc.insecure_channel(stack.address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        state = job_pb2.JOB_STATE_RUNNING
        for _ in range(50):
            request = job_pb2.GetJobRequest(job_id=job_id)
            state = stub.GetJob(request, metadata=metadata, timeout=10).job.state
            if state == job_pb2.JOB_STATE_CANCELLED:
                break
            time.sleep(0.1)
        assert state == job_pb2.JOB_STATE_CANCELLED


def test_unknown_paths_and_methods_answer_in_openai_shape(stack: Stack) -> None:
    reply = httpx.get(f"{stack.openai_url}/nothing-here", timeout=10)
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "not_found_error"
    reply = httpx.post(f"{stack.openai_url}/chat/completions", content=b"{not json", timeout=10)
    assert reply.status_code == 400
    assert "JSON" in reply.json()["error"]["message"]


def test_disconnect_cancels_a_unary_job(stack: Stack) -> None:
    # 40 steps of 0.3 s: 12 s if it ran on. The client gives up after 1 s.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{stack.openai_url}/images/generations",
            json={"model": "t2i", "prompt": "slow", "num_inference_steps": 40},
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=1.0,
        )
    # The job was cancelled with the call: a new one gets the device at once.
    started = time.monotonic()
    reply = _generate(stack, 1)
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 6


def test_oversized_body_is_413(stack: Stack) -> None:
    # Over the adapter's --max-body-mb (96 MiB): refused before any upstream call.
    reply = httpx.post(
        f"{stack.openai_url}/chat/completions",
        content=b" " * (100 * 1024 * 1024),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def test_browser_preflight_allows_the_sdk_headers(stack: Stack) -> None:
    reply = httpx.request(
        "OPTIONS",
        f"{stack.openai_url}/chat/completions",
        headers={
            "origin": "http://localhost:3000",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-stainless-os",
        },
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-stainless-os" in reply.headers["access-control-allow-headers"]
