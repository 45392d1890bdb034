"""The browser playground at the edge's own URL: `python -m gateway.stack` builds clients/web/dist
when it is stale, serves it through Envoy (a GET/HEAD route to gateway/static.py on loopback)
and prints the URL; the page's grpc-web calls go to its own origin, and gRPC, grpc-web and
HTTP/JSON keep working on the same port. Also the static server on its own (content types,
cache headers, no listings, no traversal) and the optional route in the rendered config."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gateway import static
from gateway.processes import REPO
from gateway.render import EdgeConfig, Endpoint, capability_upstream, render
from gateway.stack import build_parser, config_from_args
from mmserve.t2i.v1 import t2i_pb2, t2i_pb2_grpc
from tests.e2e.support import SLEEPY, T2I, post_json, t2i_request

WEB = REPO / "clients" / "web"
DRIVER = Path(__file__).with_name("web") / "served-page.mjs"
ARTIFACTS = REPO / "build" / "test-artifacts" / "playground-served"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


# --- the static server alone ---
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    """One raw request: http.client sends the path exactly as given (no normalization)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


TRAVERSALS = (
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/assets/..%2f..%2f..%2fpackage.json",
    "/assets/%2e%2e/%2e%2e/package.json",
    "/..%5c..%5cpackage.json",
    "/index.html%00.js",
)


def assert_refused(reply: Reply) -> None:
    assert reply.status in (400, 404), reply
    assert b"root:" not in reply.body, reply.body[:200]
    assert b"mmserve" not in reply.body, reply.body[:200]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[static.StaticServer, Path]]:
    root = tmp_path / "dist"
    (root / "assets" / "empty").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    for name in ("app-1a2b.js", "mod.mjs", "style.css", "lib.wasm", "app-1a2b.js.map"):
        (root / "assets" / name).write_bytes(b"\0asm" if name.endswith(".wasm") else b"x")
    (root / ".env").write_text("SECRET=1")
    (tmp_path / "secret.txt").write_text("mmserve secret outside the root")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    server = static.StaticServer(root).start()
    try:
        yield server, root
    finally:
        server.stop()


def test_static_server_content_types_and_cache(site: tuple[static.StaticServer, Path]) -> None:
    server, _ = site
    expected = {
        "/": "text/html; charset=utf-8",
        "/index.html": "text/html; charset=utf-8",
        "/assets/app-1a2b.js": "text/javascript; charset=utf-8",
        "/assets/mod.mjs": "text/javascript; charset=utf-8",
        "/assets/style.css": "text/css; charset=utf-8",
        "/assets/lib.wasm": "application/wasm",
        "/assets/app-1a2b.js.map": "application/json",
    }
    for path, kind in expected.items():
        reply = fetch(server.port, path)
        assert reply.status == 200, (path, reply)
        assert reply.headers["content-type"] == kind, path
        assert reply.headers["x-content-type-options"] == "nosniff"
        hashed = path.startswith("/assets/")
        assert reply.headers["cache-control"] == (static.IMMUTABLE if hashed else "no-cache")
    # HEAD: the same headers, no body; a known ETag gets 304.
    head = fetch(server.port, "/index.html", "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len("<!doctype html><title>t</title>"))
    again = fetch(server.port, "/", headers={"if-none-match": head.headers["etag"]})
    assert again.status == 304
    assert again.body == b""
    # GET and HEAD only.
    posted = fetch(server.port, "/", "POST")
    assert posted.status == 405
    assert posted.headers["allow"] == "GET, HEAD"


def test_static_server_refuses_listings_dotfiles_and_traversal(
    site: tuple[static.StaticServer, Path],
) -> None:
    server, _ = site
    for path in ("/assets/", "/assets/empty/", "/.env", "/escape.txt", "/nope.js", *TRAVERSALS):
        assert_refused(fetch(server.port, path))


def test_playground_build_is_checked_and_skipped_when_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = tmp_path / "web"
    (web / "src").mkdir(parents=True)
    (web / "package.json").write_text("{}")
    (web / "src" / "main.ts").write_text("")
    assert "missing" in static.stale(web)
    # No npm and nothing built: a clear error naming the way out.
    monkeypatch.setattr(static.shutil, "which", lambda name: None)
    with pytest.raises(static.PlaygroundError, match=r"npm is not installed.*--no-playground"):
        static.ensure_built(web, say=lambda text: None)
    (web / "dist").mkdir()
    (web / "dist" / "index.html").write_text("built")
    assert static.stale(web) == ""
    assert static.ensure_built(web, say=lambda text: None) == web / "dist"  # fresh: no npm run
    # A source newer than the build: stale; without npm the old build is served, with a word.
    later = time.time() + 5
    os.utime(web / "src" / "main.ts", (later, later))
    assert "main.ts changed" in static.stale(web)
    said: list[str] = []
    assert static.ensure_built(web, say=said.append) == web / "dist"
    assert "serving the existing build" in said[0]


# --- the rendered config ---
def test_the_playground_route_is_optional_last_and_get_only() -> None:
    base = EdgeConfig(
        upstreams=(capability_upstream("t2i", (Endpoint("127.0.0.1", 50051),)),),
        edge_endpoints=(Endpoint("127.0.0.1", 50050),),
        descriptor_path="/tmp/mmserve.binpb",
    )
    assert "playground" not in render(base)
    config = yaml.safe_load(render(replace(base, playground=Endpoint("127.0.0.1", 8001))))
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    last = routes[-1]
    assert last["route"]["cluster"] == "playground"
    assert last["match"]["prefix"] == "/"
    method = last["match"]["headers"][0]
    assert method["name"] == ":method"
    assert method["string_match"]["safe_regex"]["regex"] == "GET|HEAD"
    assert all(r["route"]["cluster"] != "playground" for r in routes[:-1])
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    address = clusters["playground"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"]["port_value"] == 8001
    assert "health_checks" not in clusters["playground"]


def test_stack_flag_turns_the_playground_off() -> None:
    on = config_from_args(build_parser().parse_args([]))
    off = config_from_args(build_parser().parse_args(["--no-playground"]))
    assert on.playground == WEB / "dist"
    assert off.playground is None


# --- the stack as `python -m gateway.stack` runs it ---
@dataclass
class Served:
    url: str  # the playground, as the banner prints it
    port: int  # the edge
    output: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The stack with the sleepy t2i service and the playground (built if stale)."""
    if not (WEB / "node_modules" / ".bin" / "vite").exists():
        pytest.fail("the playground's packages are missing: run `npm ci` in clients/web")
    tmp = tmp_path_factory.mktemp("served")
    out = tmp / "stack.out"
    command = [
        sys.executable, "-m", "gateway.stack",
        "--only", "t2i", "--module", f"t2i={SLEEPY}", "--service-args", "t2i=--step-seconds 0.1",
        "--port", "0", "--admin-port", "0", "--run-dir", str(tmp / "run"), "--stop-grace", "15",
    ]  # fmt: skip
    with out.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # A stale dist/ is rebuilt first (npm run build, ~20 s on two busy cores).
        deadline = time.monotonic() + static.BUILD_TIMEOUT_S + 120
        while "Ctrl-C stops everything." not in out.read_text(errors="replace"):
            assert process.poll() is None, f"stack exited early:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"no banner in time:\n{out.read_text()}"
            time.sleep(0.2)
        text = out.read_text()
        found = re.search(r"playground: (http://127\.0\.0\.1:(\d+)/) ", text)
        assert found, text
        edge = re.search(r"mmserve edge: 127\.0\.0\.1:(\d+)", text)
        assert edge, text
        assert edge.group(1) == found.group(2), text
        yield Served(found.group(1), int(found.group(2)), out)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_the_edge_serves_the_page_and_its_assets(served: Served) -> None:
    index = fetch(served.port, "/")
    assert index.status == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.headers["cache-control"] == "no-cache"
    assert b"mmserve playground" in index.body
    assert "mmserve-replica" not in index.headers  # no replica pinning for static files
    assets = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', index.body.decode())
    kinds = {Path(a).suffix: a for a in assets}
    assert {".js", ".css"} <= kinds.keys(), assets
    script = fetch(served.port, f"/{kinds['.js']}")
    assert script.status == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["cache-control"] == static.IMMUTABLE
    assert int(script.headers["content-length"]) == len(script.body) > 1000
    style = fetch(served.port, f"/{kinds['.css']}", "HEAD")
    assert style.status == 200
    assert style.body == b""
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    assert fetch(served.port, "/index.html").body == index.body
    assert fetch(served.port, "/no-such-file.js").status == 404


def test_the_edge_refuses_traversal_and_listings(served: Served) -> None:
    for path in ("/assets/", *TRAVERSALS):
        assert_refused(fetch(served.port, path))


def _grpc_web_unary(port: int, method: str, message: bytes) -> tuple[list[bytes], bytes]:
    """A binary grpc-web call: (messages, trailer block)."""
    body = struct.pack(">BI", 0, len(message)) + message
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/{T2I}/{method}",
        data=body,
        method="POST",
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.headers["content-type"].startswith("application/grpc-web")
        raw = reply.read()
    messages, trailer, offset = [], b"", 0
    while offset < len(raw):
        flag, size = struct.unpack(">BI", raw[offset : offset + 5])
        data = raw[offset + 5 : offset + 5 + size]
        offset += 5 + size
        if flag & 0x80:
            trailer = data
        else:
            messages.append(data)
    return messages, trailer


def test_grpc_grpc_web_and_json_still_work_on_the_same_port(served: Served) -> None:
    address = f"127.0.0.1:{served.port}"
    with grpc.insecure_channel(address) as channel:
        stub = t2i_pb2_grpc.ImageGenerationServiceStub(channel)
        events = list(stub.StreamTextToImage(t2i_request(steps=2), timeout=30))
        assert events[-1].WhichOneof("event") == "result"
    messages, trailer = _grpc_web_unary(
        served.port, "GetModelInfo", t2i_pb2.GetModelInfoRequest().SerializeToString()
    )
    assert b"grpc-status:0" in trailer.replace(b" ", b""), trailer
    info = t2i_pb2.GetModelInfoResponse.FromString(messages[0])
    assert info.model_info.family == "sleepy"
    reply = post_json(f"http://{address}/{T2I}/GetModelInfo", {})
    assert reply.status == 200, reply.body
    assert reply.json()["modelInfo"]["family"] == "sleepy"
    # A GET of a gRPC path still goes to gRPC's route, never to the static files.
    assert b"mmserve playground" not in fetch(served.port, f"/{T2I}/GetModelInfo").body


def test_chromium_runs_a_panel_from_the_single_url(served: Served) -> None:
    """No ?edge=: the page calls its own origin, and the t2i panel streams a job to its end."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium", pytrace=False)
    done = subprocess.run(
        ["node", str(DRIVER), served.url, str(ARTIFACTS)],
        env={**os.environ, "MMSERVE_WEB_DIR": str(WEB)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    page: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    problems = "\n".join(page["log"])
    assert "error" not in page, (page["error"], problems)
    origin = served.url.rstrip("/")
    assert page["origin"] == page["edge"] == origin
    assert page["health"].startswith("t2i ✓"), page["health"]
    t2i = page["t2i"]
    assert t2i["state"] == "done", (t2i, problems)
    assert t2i["images"] == 1
    assert t2i["progress"] == "3"
    assert t2i["jobId"]
    # Every request the page made went to the one URL: page, assets and grpc-web calls.
    urls = [r["url"] for r in page["requests"] if not r["url"].startswith(("blob:", "data:"))]
    assert all(u.startswith(served.url) for u in urls), urls
    posts = {r["url"].removeprefix(origin) for r in page["requests"] if r["method"] == "POST"}
    assert f"/{T2I}/StreamTextToImage" in posts
    assert "[requestfailed]" not in problems, problems
    assert (ARTIFACTS / "t2i.png").stat().st_size > 0
    # The static server logged the page and its assets (it runs in the launcher's process).
    log = (served.output.parent / "run" / "logs" / "playground.log").read_text()
    assert '"GET / HTTP/1.1" 200' in log, log
