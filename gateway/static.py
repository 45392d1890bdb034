"""The browser playground at the edge's own URL: builds clients/web/dist when it is missing or
older than its sources, and serves it from a small static file server on loopback that Envoy
routes GET and HEAD requests to (gateway/envoy.yaml.j2, the `playground` route and cluster).

    python -m gateway.static --port 8000            # build if stale, then serve dist/ alone

The server answers GET and HEAD for files under its root only: no directory listings, no
dotfiles, no `..` or backslashes, no symlinks leading out of the root; explicit content types
(JavaScript modules and WebAssembly need the right ones); Vite's hashed `assets/` are cached for
a year, everything else is revalidated (ETag).
"""

from __future__ import annotations

import argparse
import fcntl
import http.server
import mimetypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from gateway.processes import REPO

WEB_DIR = REPO / "clients" / "web"
BUILD_TIMEOUT_S = 300.0
# The playground's own files that shape the build, besides src/, proto/ and the repo's protos/.
BUILD_FILES = (
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
    "buf.gen.yaml",
)

# Explicit types: the platform's mimetypes tables differ (some lack .mjs or .wasm, some say
# text/plain for .js), and browsers refuse module scripts and streamed WebAssembly otherwise.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".wav": "audio/wav",
}
# Vite names what it emits under assets/ by content hash: safe to cache for good.
IMMUTABLE_FOLDER = "assets"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


class PlaygroundError(RuntimeError):
    """The playground cannot be built or served; the message says what to do."""


# --- build ---
def sources(web: Path = WEB_DIR) -> Iterator[Path]:
    """Every input of `npm run build` (src/gen is its output: npm run gen regenerates it)."""
    src = web / "src"
    if src.is_dir():
        yield from (p for p in src.rglob("*") if "gen" not in p.relative_to(src).parts[:1])
    for name in BUILD_FILES:
        yield web / name
    if (web / "proto").is_dir():
        yield from (web / "proto").rglob("*.proto")
    yield from (REPO / "protos").rglob("*.proto")


def stale(web: Path = WEB_DIR) -> str:
    """Why dist/ must be (re)built, or "" when it is up to date."""
    index = web / "dist" / "index.html"
    if not index.is_file():
        return f"{index.relative_to(web)} is missing"
    built = index.stat().st_mtime
    for path in sources(web):
        if path.is_file() and path.stat().st_mtime > built:
            return f"{path} changed since the last build"
    return ""


def _locked(web: Path) -> Callable[[], None]:
    """An exclusive lock on the web folder (two stacks or test sessions building at once would
    empty each other's dist/); returns the release."""
    fd = os.open(web, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release() -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return release


def _run_build(web: Path, npm: str, timeout: float) -> None:
    """npm run build in its own process group, so a timeout also ends buf, tsc and vite."""
    process = subprocess.Popen(
        [npm, "run", "build"],
        cwd=web,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise PlaygroundError(
            f"`npm run build` in {web} took longer than {timeout:g} s; "
            "build it by hand or start with --no-playground"
        ) from None
    except BaseException:  # Ctrl-C: its own session gets no SIGINT from the terminal
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    if process.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise PlaygroundError(
            f"`npm run build` in {web} failed ({process.returncode}):\n{tail}\n"
            "fix the build or start with --no-playground"
        )


def ensure_built(
    web: Path = WEB_DIR, timeout: float = BUILD_TIMEOUT_S, say: Callable[[str], None] = print
) -> Path:
    """web/dist, built with `npm run build` when missing or older than a source. Without npm
    (or the playground's packages) an existing build is served as it is; no build at all is an
    error."""
    dist = web / "dist"
    if not (web / "package.json").is_file():
        raise PlaygroundError(f"no playground in {web} (package.json missing)")
    release = _locked(web)
    try:
        reason = stale(web)
        if not reason:
            return dist
        npm = shutil.which("npm")
        packages = (web / "node_modules" / ".bin" / "vite").exists()
        if npm is None or not packages:
            missing = (
                "npm is not installed (Node.js 20+)"
                if npm is None
                else f"the playground's packages are missing (`npm ci` in {web}, or "
                "`make install-node`)"
            )
            if (dist / "index.html").is_file():
                say(f"playground: {reason}, but {missing}: serving the existing build")
                return dist
            raise PlaygroundError(
                f"cannot build the playground: {missing}; or start with --no-playground"
            )
        say(f"playground: {reason}; building it (npm run build, at most {timeout:g} s)...")
        started = time.monotonic()
        _run_build(web, npm, timeout)
        if not (dist / "index.html").is_file():
            raise PlaygroundError(f"`npm run build` in {web} left no dist/index.html")
        say(f"playground: built in {time.monotonic() - started:.0f} s")
        return dist
    finally:
        release()


# --- serve ---
def content_type(path: Path) -> str:
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


class StaticHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the files under the server's root; nothing else."""

    server: StaticServer
    protocol_version = "HTTP/1.1"  # keep-alive with Envoy's connection pool
    server_version = "mmserve-static"
    timeout = 120  # idle keep-alive connections; Envoy's cluster idle timeout is shorter

    def version_string(self) -> str:
        return self.server_version

    def resolve(self) -> tuple[int, Path | None]:
        """(status, file): 200 and the file, or the status of the refusal."""
        raw = urllib.parse.urlsplit(self.path).path
        if not raw.startswith("/"):
            return 400, None
        path = urllib.parse.unquote(raw, errors="strict")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        # Traversal and things a static site never names: refused before touching the disk.
        if any(p == ".." or "\\" in p or "\x00" in p for p in parts):
            return 400, None
        if any(p.startswith(".") for p in parts):
            return 404, None
        root = self.server.root
        target = root.joinpath(*parts)
        if target.is_dir():
            target = target / "index.html"  # never a listing
        try:
            target = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return 404, None
        if not target.is_relative_to(root) or not target.is_file():
            return 404, None  # a symlink out of the root, or a socket, fifo, ...
        return 200, target

    def do_GET(self) -> None:
        self.answer(body=True)

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        try:
            status, path = self.resolve()
        except UnicodeDecodeError:
            status, path = 400, None
        if path is None:
            self.refuse(status, body)
            return
        stat = path.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        hashed = path.relative_to(self.server.root).parts[0] == IMMUTABLE_FOLDER
        cache = IMMUTABLE if hashed else REVALIDATE
        if self.headers.get("if-none-match") == etag:
            self.send_response(304)
            self.send_header("etag", etag)
            self.send_header("cache-control", cache)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", content_type(path))
        self.send_header("content-length", str(stat.st_size))
        self.send_header("cache-control", cache)
        self.send_header("etag", etag)
        self.send_header("last-modified", self.date_time_string(int(stat.st_mtime)))
        self.send_header("x-content-type-options", "nosniff")
        self.end_headers()
        if body:
            with path.open("rb") as source:
                shutil.copyfileobj(source, self.wfile, 64 * 1024)

    def refuse(self, status: int, body: bool) -> None:
        text = {400: "bad request\n", 404: "not found\n", 405: "method not allowed\n"}[status]
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.send_header("cache-control", "no-store")
        self.send_header("x-content-type-options", "nosniff")
        if status == 405:
            self.send_header("allow", "GET, HEAD")
            self.close_connection = True  # its body, if any, was never read
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _not_allowed(self) -> None:
        self.refuse(405, body=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def log_message(self, format: str, *args: object) -> None:
        self.server.log(f"{self.address_string()} {format % args}")


class StaticServer(http.server.ThreadingHTTPServer):
    """Serves `root` on host:port (port 0: a free one) from a daemon thread."""

    daemon_threads = True

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None
    ) -> None:
        self.root = Path(root).resolve()
        if not (self.root / "index.html").is_file():
            raise PlaygroundError(f"nothing to serve: no index.html in {self.root}")
        self.log_path = log_path
        self._log_lock = threading.Lock()
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__((host, port), StaticHandler)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def log(self, line: str) -> None:
        if self.log_path is not None:
            with self._log_lock, self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def handle_error(self, request: object, client_address: object) -> None:
        # A browser or Envoy that hung up mid-file: log it, no traceback on the console.
        self.log(f"{client_address} error: {sys.exc_info()[1]!r}")

    def start(self) -> StaticServer:
        self.thread = threading.Thread(
            target=self.serve_forever, name="playground-static", daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.shutdown()
            self.thread.join(5)
            self.thread = None
        self.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.static",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--web", type=Path, default=WEB_DIR, help="The playground's folder.")
    parser.add_argument("--host", default="127.0.0.1", help="Listen address.")
    parser.add_argument("--port", type=int, default=8000, help="Port; 0 picks a free one.")
    parser.add_argument(
        "--build", action=argparse.BooleanOptionalAction, default=True, help="Build if stale."
    )
    args = parser.parse_args(argv)
    try:
        dist = ensure_built(args.web) if args.build else args.web / "dist"
        server = StaticServer(dist, args.host, args.port)
    except (PlaygroundError, OSError) as exc:
        print(f"gateway.static: {exc}", file=sys.stderr)
        return 1
    print(f"serving {dist} at http://{args.host}:{server.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
