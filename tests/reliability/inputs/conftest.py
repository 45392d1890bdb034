"""Fixtures of the bad-input suite: one real server process per capability for the whole
suite (started in parallel, only for the capabilities the selected tests use), a folder and a
loopback HTTP server for the URI policy, and the end-of-run tally.

Model loading is the expensive part, so servers are shared by every test here; each test ends
by checking that its server is still alive, SERVING, logged no errors, and still answers normal
requests.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.reliability.inputs.corpus import encode, noise, sound_file, tone
from tests.reliability.inputs.fleet import (
    CAPABILITY_ARGS,
    CAPABILITY_MODULES,
    START_TIMEOUT,
    HttpMedia,
    MediaRoot,
    Served,
    common_args,
    launch,
    wait_serving,
)
from tests.reliability.inputs.tally import TALLY

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers(*capabilities): capability servers a test uses")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = TALLY.lines()
    if lines:
        terminalreporter.section("bad input: what was tried and seen")
        for line in lines:
            terminalreporter.write_line(line)


# ---------------------------------------------------------------------------------------------
# Media the URI policy is tested against


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> MediaRoot:
    base = tmp_path_factory.mktemp("uri-media")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    png = encode(noise(32, 32, 31), "PNG")
    wav = sound_file(tone(0.5, 16000), 16000, "WAV", "PCM_16")
    (allowed / "ok.png").write_bytes(png)
    (allowed / "ok.wav").write_bytes(wav)
    (outside / "secret.png").write_bytes(png)
    (outside / "secret.wav").write_bytes(wav)
    (allowed / "link_out.png").symlink_to(outside / "secret.png")
    (allowed / "sub").mkdir()
    os.mkfifo(allowed / "fifo.png")
    with (allowed / "sparse.png").open("wb") as handle:  # 200 MB that take no disk
        handle.truncate(200 * 1024 * 1024)
    return MediaRoot(allowed, outside, png, wav)


@pytest.fixture(scope="session")
def http_media(media_root: MediaRoot) -> Iterator[HttpMedia]:
    state = HttpMedia(0)
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = {
        "/allowed/ok.png": (200, media_root.png, {}),
        "/allowed/ok.wav": (200, media_root.wav, {}),
        "/private/secret.png": (200, media_root.png, {}),
        "/private/secret.wav": (200, media_root.wav, {}),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requested.append(self.path)
            if self.path == "/allowed/redirect-private":
                self._reply(302, b"", {"Location": state.url("/private/secret.png")})
            elif self.path == "/allowed/redirect-file":
                self._reply(302, b"", {"Location": "file:///etc/passwd"})
            elif self.path == "/allowed/huge.png":
                self._reply(200, b"", {"Content-Length": str(10 * 1024**3)})
            elif self.path in routes:
                code, body, headers = routes[self.path]
                self._reply(code, body, headers)
            else:
                self._reply(404, b"not found", {})

        def _reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(code)
            headers = {"Content-Length": str(len(body)), **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# The servers


def _capabilities_used(session: pytest.Session) -> set[str]:
    """Capabilities the collected tests of this folder need: from `servers` markers and from
    parameters that carry a `capability` (RPCs, slots)."""
    used: set[str] = set()
    for item in session.items:
        if HERE not in Path(str(item.path)).parents:
            continue
        for marker in item.iter_markers("servers"):
            used.update(marker.args)
        callspec = getattr(item, "callspec", None)
        for value in callspec.params.values() if callspec else ():
            capability = getattr(value, "capability", None)
            if capability in CAPABILITY_MODULES:
                used.add(capability)
    return used


@pytest.fixture(scope="session")
def fleet(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    media_root: MediaRoot,
    http_media: HttpMedia,
) -> Iterator[dict[str, Served]]:
    """The capability servers, started together (model loads overlap) and stopped at the end
    with SIGTERM; each must then drain and exit 0."""
    wanted = sorted(_capabilities_used(request.session))
    prefixes = [f"file://{media_root.allowed}/", http_media.prefix]
    folders = {c: tmp_path_factory.mktemp(f"server-{c}") for c in wanted}
    processes = {
        c: launch(c, [*common_args(prefixes), *CAPABILITY_ARGS[c]], folders[c]) for c in wanted
    }
    served: dict[str, Served] = {}
    try:
        with ThreadPoolExecutor(max(1, len(wanted))) as pool:
            futures = {
                c: pool.submit(wait_serving, c, processes[c], folders[c], START_TIMEOUT)
                for c in wanted
            }
            for capability, future in futures.items():
                served[capability] = future.result()
        yield served
    finally:
        for capability, process in processes.items():
            if capability not in served and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        with ThreadPoolExecutor(max(1, len(served))) as pool:  # drains overlap
            stops = {c: pool.submit(s.stop) for c, s in served.items()}
            exits = {c: stop.result() for c, stop in stops.items()}
        bad = {c: code for c, code in exits.items() if code != 0}
        if bad:
            logs = {c: served[c].log_tail(2000) for c in bad}
            pytest.fail(f"servers did not drain and exit 0: {bad}\n{logs}")
        for folder in folders.values():
            shutil.rmtree(folder / "data", ignore_errors=True)


def _server(fleet: dict[str, Served], capability: str) -> Served:
    if capability not in fleet:
        pytest.fail(f"{capability} server not started: mark the test servers({capability!r})")
    return fleet[capability]


@pytest.fixture
def vision(fleet: dict[str, Served]) -> Served:
    return _server(fleet, "vision")


@pytest.fixture
def t2i(fleet: dict[str, Served]) -> Served:
    return _server(fleet, "t2i")


@pytest.fixture
def vl(fleet: dict[str, Served]) -> Served:
    return _server(fleet, "vl")


@pytest.fixture
def omni(fleet: dict[str, Served]) -> Served:
    return _server(fleet, "omni")
