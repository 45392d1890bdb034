"""The browser playground (clients/web) in headless Chromium, driven by playwright-core, against
the real stack through Envoy's grpc-web listener: each panel runs its capability on the tiny
models and the test checks what the page shows. Screenshots: build/test-artifacts/playground/."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.static import PlaygroundError, ensure_built
from mmserve_client import JobState, T2IClient
from tests.clients.helpers import REPO, png, wait_for_state
from tests.clients.servers import Served

WEB = REPO / "clients" / "web"
ARTIFACTS = REPO / "build" / "test-artifacts" / "playground"
# The steps playground.mjs takes, each with its screenshot.
PANEL_STEPS = ("health", "t2i", "t2i_stop", "t2i_error", "t2i_inpaint", "vl", "vision", "omni")
DRIVER = Path(__file__).with_name("playground.mjs")


def built_dist() -> Path:
    """clients/web/dist, rebuilt (npm run build: codegen, type check, Vite) when a source is
    newer than the last build, as `python -m gateway.stack` does."""
    if not (WEB / "node_modules" / ".bin" / "vite").exists():
        pytest.fail("the playground's packages are missing: run `npm ci` in clients/web")
    try:
        return ensure_built(WEB, say=lambda text: None)
    except PlaygroundError as exc:
        pytest.fail(str(exc), pytrace=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The built playground on a static file server of its own origin (Envoy allows it)."""
    handler = functools.partial(_Quiet, directory=str(built_dist()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_every_panel_works_in_chromium(
    t2i_server: Served,
    vl_server: Served,
    vision_server: Served,
    omni_server: Served,
    page_origin: str,
    tmp_path: Path,
) -> None:
    edge = t2i_server.target  # one edge address serves every capability
    assert {vl_server.target, vision_server.target, omni_server.target} == {edge}
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    red.write_bytes(png(color=(230, 20, 20)))
    blue.write_bytes(png(color=(20, 20, 230)))
    done = subprocess.run(
        [
            "node",
            str(DRIVER),
            f"{page_origin}/index.html?edge=http://{edge}",
            str(ARTIFACTS),
            str(red),
            str(blue),
        ],
        env={**os.environ, "MMSERVE_WEB_DIR": str(WEB)},
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout.strip().splitlines()[-1])
    problems = "\n".join(page["log"])

    assert page["health"]["text"].count("✓") == 4, (page["health"], problems)
    for name in PANEL_STEPS:
        assert page[name].get("visiblePanels") == 1, (name, page[name])

    t2i = page["t2i"]
    assert t2i["state"] == "done", (t2i, problems)
    assert t2i["images"] == 1
    assert t2i["previews"] == 4  # one live preview per step
    assert any(s.startswith("step 1/4") for s in t2i["statuses"])  # progress shown live
    assert t2i["progress"] == "4"
    assert "seed 7" in t2i["status"]
    # The negative prompt, guidance and scheduler the panel set reached the service: its image
    # is the one the SDK gets for the same request.
    assert t2i["schedulers"] > 2  # "model default" and the compatible ones
    with T2IClient(edge) as client:
        same = client.generate(
            "a red fox",
            steps=4,
            seed=7,
            negative_prompt="blurry",
            guidance_scale=3.5,
            scheduler="EulerDiscreteScheduler",
        )
    assert base64.b64decode(t2i["imageBase64"]) == same.encoded[0].data
    # The built-in t2i model has random weights: the panel says noise is expected, and how to
    # serve a real checkpoint.
    assert t2i["randomWeights"] == "true"
    assert "random weights" in t2i["notice"]
    assert "--model" in t2i["notice"]

    stopped = page["t2i_stop"]
    assert stopped["state"] == "error", stopped
    assert stopped["status"] == "cancelled"
    with T2IClient(edge) as client:
        job = wait_for_state(client, stopped["jobId"], JobState.CANCELLED)
        assert job.step < 150

    error = page["t2i_error"]
    assert error["state"] == "error"
    assert error["status"].startswith("INVALID_ARGUMENT")
    assert "params.width" in error["status"]

    inpainted = page["t2i_inpaint"]
    assert inpainted["state"] == "done", (inpainted, problems)
    assert inpainted["maskDrawn"] == "true"  # the stroke on the canvas became the mask
    assert inpainted["images"] == 1
    assert inpainted["editDisabled"]  # the built-in Stable Diffusion has no edit pipeline

    vl = page["vl"]
    assert vl["state"] == "done", (vl, problems)
    assert vl["answer"].strip()
    assert vl["userImages"] == 1
    assert vl["updates"] >= 3  # the answer grew delta by delta
    assert "8 tokens" in vl["status"]

    vision = page["vision"]
    assert vision["similarity"] == "done", (vision, problems)
    assert len(vision["cells"]) == 6  # 2 images x 3 texts
    assert all(-1.0 <= float(c) <= 1.0 for c in vision["cells"])
    assert vision["classify"] == "done"
    assert len(vision["bars"]) == 6  # 2 images x 3 labels
    assert "softmax" in vision["status"]
    # The chosen images go into a collection and come back from a text search, with thumbnails.
    assert vision["added"] == "done", (vision, problems)
    assert "added 2 images" in vision["addedStatus"]
    assert vision["searched"] == "done", (vision, problems)
    assert len(vision["hits"]) == 2
    assert {hit.split()[0] for hit in vision["hits"]} == {"red.png", "blue.png"}
    assert vision["hitImages"] == 2

    omni = page["omni"]
    assert omni["state"] == "done", (omni, problems)
    assert omni["recorded"] > 1.0  # the (fake) microphone was recorded and sent
    assert omni["answer"].strip()
    assert omni["speechSeconds"] > 0.2  # speech arrived in chunks and played
    assert omni["audioSrc"]
    assert omni["voices"] >= 2
    assert sorted(p.name for p in ARTIFACTS.glob("*.png")) == sorted(
        f"{name}.png" for name in PANEL_STEPS
    )
