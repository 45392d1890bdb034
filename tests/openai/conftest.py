"""Stacks for the OpenAI-compatible API tests: real Envoy, the capability services and
`python -m gateway.openai`, all started by gateway.stack as `python -m gateway.stack` starts
them; every call goes through the edge's one port with the official `openai` client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from gateway.catalog import CAPABILITIES, capability
from gateway.render import EdgeConfig
from gateway.stack import ServiceGroup, Stack, StackConfig, available_capabilities
from tests.e2e.conftest import SERVICE_ENV
from tests.e2e.support import SLEEPY

API_KEY = "secret-key"


def _edge() -> EdgeConfig:
    return EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path="")


@pytest.fixture(scope="session")
def openai_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every capability of this checkout on its default built-in model, behind Envoy, with the
    OpenAI-compatible service on /v1/."""
    present = available_capabilities()
    missing = [name for name in CAPABILITIES if name not in present]
    assert not missing, f"no services/<name>/__main__.py for {missing}"
    config = StackConfig(
        groups=[ServiceGroup(capability(name)) for name in present],
        port=0,
        admin_port=0,
        run_dir=tmp_path_factory.mktemp("openai-stack"),
        ready_timeout=300,
        stop_grace=20,
        env=SERVICE_ENV,
        edge=_edge(),
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def sleepy_openai_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """t2i served by the sleepy test engine (0.3 s per step, no model), with an API key and a
    queue of one, so keys, full queues, deadlines and disconnects are visible."""
    group = ServiceGroup(
        capability("t2i"),
        module=SLEEPY,
        args=(
            "--step-seconds", "0.3", "--max-queue-size", "1", "--api-keys", f"test:{API_KEY}",
            "--drain-grace-seconds", "5",
        ),
    )  # fmt: skip
    config = StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=tmp_path_factory.mktemp("openai-sleepy"),
        ready_timeout=120,
        stop_grace=10,
        env=SERVICE_ENV,
        edge=_edge(),
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def client_for(stack: Stack, api_key: str = "unused", timeout: float = 180) -> OpenAI:
    """The official client, as any user points it at the edge; no retries, so every status
    reaches the test."""
    assert stack.openai_url is not None
    return OpenAI(base_url=stack.openai_url, api_key=api_key, max_retries=0, timeout=timeout)


@pytest.fixture
def client(openai_stack: Stack) -> Iterator[OpenAI]:
    with client_for(openai_stack) as found:
        yield found
