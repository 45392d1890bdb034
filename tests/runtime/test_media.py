"""services.runtime.media: image protos to bytes, and the URI policy that fences in file and
network reads (SSRF, path traversal)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mmserve.common.v1 import media_pb2
from services.runtime.errors import InvalidArgument
from services.runtime.images import ImageLimits
from services.runtime.media import (
    UriPolicy,
    declared_format,
    fetch_uri,
    image_bytes,
    load_image,
)


def _png(color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()
BIG = b"\x00" * 5000


def _refused(uri: str, policy: UriPolicy) -> str:
    with pytest.raises(InvalidArgument) as info:
        image_bytes(media_pb2.Image(uri=uri), field="images[0]", policy=policy)
    assert info.value.violations[0].field == "images[0].uri"
    return info.value.violations[0].description


# --- data and declared format ------------------------------------------------------------------


def test_data_is_returned_as_is() -> None:
    msg = media_pb2.Image(data=PNG, format=media_pb2.IMAGE_FORMAT_PNG)
    assert image_bytes(msg, field="image", policy=UriPolicy()) == PNG


def test_empty_data_and_no_source_are_refused() -> None:
    with pytest.raises(InvalidArgument) as empty:
        image_bytes(media_pb2.Image(data=b""), field="image", policy=UriPolicy())
    assert empty.value.violations[0].field == "image.data"
    with pytest.raises(InvalidArgument) as unset:
        image_bytes(media_pb2.Image(), field="image", policy=UriPolicy())
    assert unset.value.violations[0].field == "image"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (media_pb2.IMAGE_FORMAT_UNSPECIFIED, None),
        (media_pb2.IMAGE_FORMAT_PNG, "PNG"),
        (media_pb2.IMAGE_FORMAT_JPEG, "JPEG"),
        (media_pb2.IMAGE_FORMAT_WEBP, "WEBP"),
        (99, None),  # a value from a newer contract
    ],
)
def test_declared_format(value: int, expected: str | None) -> None:
    assert declared_format(media_pb2.Image(format=value)) == expected  # type: ignore[arg-type]


def test_load_image_checks_the_declared_format() -> None:
    msg = media_pb2.Image(data=PNG, format=media_pb2.IMAGE_FORMAT_JPEG)
    with pytest.raises(InvalidArgument) as info:
        load_image(msg, field="image", policy=UriPolicy(), limits=ImageLimits())
    assert info.value.violations[0].field == "image.data"
    msg.format = media_pb2.IMAGE_FORMAT_PNG
    assert load_image(msg, field="image", policy=UriPolicy(), limits=ImageLimits()).size == (8, 8)


# --- policy -----------------------------------------------------------------------------------


def test_uris_are_off_by_default() -> None:
    assert "disabled" in _refused("https://example.com/cat.png", UriPolicy())


@pytest.mark.parametrize("prefix", ["ftp://host/", "gopher://host/", "data:", "/plain/path"])
def test_policy_refuses_other_schemes(prefix: str) -> None:
    with pytest.raises(ValueError, match="only http, https, file"):
        UriPolicy(allowed_prefixes=(prefix,))


def test_policy_normalizes_prefixes() -> None:
    policy = UriPolicy(allowed_prefixes=("HTTPS://Images.Example.com", "file:///srv/media"))
    assert policy.allowed_prefixes == ("https://images.example.com/", "file:///srv/media/")
    assert policy.allows("https://IMAGES.example.com/a.png")
    assert not policy.allows("https://images.example.com.evil.net/a.png")
    assert not policy.allows("file:///srv/media-private/a.png")
    with pytest.raises(ValueError, match="userinfo"):
        UriPolicy(allowed_prefixes=("https://user@host/",))


@pytest.mark.parametrize(
    "uri",
    ["ftp://host/x.png", "gopher://host/", "data:image/png;base64,AAAA", "javascript:alert(1)"],
)
def test_other_schemes_are_refused_even_when_uris_are_on(uri: str, tmp_path: Path) -> None:
    policy = UriPolicy(allowed_prefixes=(f"file://{tmp_path}/", "http://host/"))
    assert "scheme" in _refused(uri, policy)


# --- file:// -----------------------------------------------------------------------------------


@pytest.fixture
def media_dirs(tmp_path: Path) -> tuple[Path, UriPolicy]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "cat.png").write_bytes(PNG)
    (allowed / "big.bin").write_bytes(BIG)
    (tmp_path / "secret.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "allowed2").mkdir()
    (tmp_path / "allowed2" / "x.png").write_bytes(PNG)
    return tmp_path, UriPolicy(allowed_prefixes=(f"file://{allowed}/",), max_bytes=4096)


def test_file_uri_inside_prefix_is_read(media_dirs: tuple[Path, UriPolicy]) -> None:
    root, policy = media_dirs
    msg = media_pb2.Image(uri=f"file://{root}/allowed/cat.png")
    assert image_bytes(msg, field="image", policy=policy) == PNG
    assert load_image(msg, field="image", policy=policy, limits=ImageLimits()).mode == "RGB"


@pytest.mark.parametrize(
    "suffix",
    ["allowed/../secret.png", "allowed/%2e%2e/secret.png", "allowed/sub/../../secret.png"],
)
def test_dot_dot_cannot_escape(media_dirs: tuple[Path, UriPolicy], suffix: str) -> None:
    root, policy = media_dirs
    assert "outside" in _refused(f"file://{root}/{suffix}", policy)


def test_symlink_cannot_escape(media_dirs: tuple[Path, UriPolicy]) -> None:
    root, policy = media_dirs
    os.symlink(root / "secret.png", root / "allowed" / "link.png")
    assert "outside" in _refused(f"file://{root}/allowed/link.png", policy)


def test_sibling_folder_with_same_prefix_is_refused(media_dirs: tuple[Path, UriPolicy]) -> None:
    root, policy = media_dirs
    assert "not under" in _refused(f"file://{root}/allowed2/x.png", policy)


def test_file_problems_are_refused_cleanly(media_dirs: tuple[Path, UriPolicy]) -> None:
    root, policy = media_dirs
    os.mkfifo(root / "allowed" / "pipe")
    (root / "allowed" / "dir").mkdir()
    assert "regular file" in _refused(f"file://{root}/allowed/pipe", policy)  # and no hang
    assert "regular file" in _refused(f"file://{root}/allowed/dir", policy)
    assert "no existing file" in _refused(f"file://{root}/allowed/missing.png", policy)
    assert "larger than" in _refused(f"file://{root}/allowed/big.bin", policy)


def test_file_uri_with_remote_host_is_refused(tmp_path: Path) -> None:
    policy = UriPolicy(allowed_prefixes=("file:///",))
    assert "not under" in _refused(f"file://otherhost{tmp_path}/x.png", policy)


# --- http:// -----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path
        if path == "/pub/cat.png":
            self._send(PNG)
        elif path == "/pub/big":
            self._send(BIG)
        elif path == "/pub/big-unsized":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while reading
            self.wfile.write(BIG)
        elif path == "/pub/hop":
            self._redirect("/pub/cat.png")
        elif path == "/pub/escape":
            self._redirect("/private/secret.png")
        elif path == "/pub/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/pub/slow":
            time.sleep(1.5)
            self._send(PNG)
        elif path == "/private/secret.png":
            self._send(b"secret")
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_policy(http_base: str, monkeypatch: pytest.MonkeyPatch) -> UriPolicy:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return UriPolicy(allowed_prefixes=(f"{http_base}/pub/",), max_bytes=4096, timeout_seconds=0.5)


def test_http_uri_is_fetched(http_base: str, http_policy: UriPolicy) -> None:
    assert fetch_uri(f"{http_base}/pub/cat.png", field="f", policy=http_policy) == PNG
    upper = f"HTTP://127.0.0.1:{http_base.rsplit(':', 1)[1]}/pub/cat.png"
    assert fetch_uri(upper, field="f", policy=http_policy) == PNG


def test_http_redirect_inside_prefix_is_followed(http_base: str, http_policy: UriPolicy) -> None:
    assert fetch_uri(f"{http_base}/pub/hop", field="f", policy=http_policy) == PNG


@pytest.mark.parametrize(
    ("path", "message"),
    [("/pub/escape", "redirects outside"), ("/pub/to-file", "HTTP 302")],  # urllib's own check
)
def test_http_redirect_outside_prefix_is_refused(
    http_base: str, http_policy: UriPolicy, path: str, message: str
) -> None:
    assert message in _refused(f"{http_base}{path}", http_policy)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/private/secret.png", "not under"),
        ("/pub/../private/secret.png", "'..'"),
        ("/pub/%2E%2E/private/secret.png", "'..'"),
        ("/pub/missing.png", "HTTP 404"),
        ("/pub/big", "larger than"),
        ("/pub/big-unsized", "larger than"),
        ("/pub/cat.png with space", "control characters"),
    ],
    ids=["outside", "dot-dot", "encoded-dot-dot", "404", "too-big", "too-big-unsized", "space"],
)
def test_http_refusals(http_base: str, http_policy: UriPolicy, path: str, message: str) -> None:
    assert message in _refused(f"{http_base}{path}", http_policy)


def test_unparsable_uri_is_refused(http_policy: UriPolicy) -> None:
    assert "does not parse" in _refused("http://[::1/pub/x.png", http_policy)


def test_http_userinfo_is_refused(http_base: str, http_policy: UriPolicy) -> None:
    # "http://127.0.0.1:port/pub/@evil" is fine as a path, but credentials in the host part
    # never are: they cannot match a normalized prefix.
    host = http_base.removeprefix("http://")
    assert "not under" in _refused(f"http://user@{host}/pub/cat.png", http_policy)


def test_http_timeout_is_enforced(http_base: str, http_policy: UriPolicy) -> None:
    started = time.monotonic()
    assert "fetching the URI failed" in _refused(f"{http_base}/pub/slow", http_policy)
    assert time.monotonic() - started < 1.4
