"""Turning `mmserve.common.v1` media messages into bytes, under the operator's URI policy.

Media normally travel as raw bytes. A URI makes the server read a file or fetch a URL on the
client's behalf, which is an SSRF and file-read hole unless fenced in, so URIs are off unless
the operator lists allowed prefixes, and even then only http, https and file are ever used:
- file:// paths are resolved (realpath) before the check, so `..` and symlinks cannot leave an
  allowed folder, and only regular files are read;
- http(s) redirects are checked against the same prefixes, bodies are capped at `max_bytes`
  and the whole fetch at `timeout_seconds`.
Every refusal is an InvalidArgument naming the request field. This module never imports grpc.
"""

from __future__ import annotations

import http.client
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from PIL import Image

from mmserve.common.v1 import media_pb2
from services.runtime.errors import InvalidArgument
from services.runtime.images import ImageLimits, decode_image

URI_SCHEMES = ("http", "https", "file")
_READ_CHUNK = 64 * 1024
_IMAGE_FORMATS = {
    media_pb2.IMAGE_FORMAT_PNG: "PNG",
    media_pb2.IMAGE_FORMAT_JPEG: "JPEG",
    media_pb2.IMAGE_FORMAT_WEBP: "WEBP",
}


class _MediaMessage(Protocol):
    """What Image and Audio share: a `source` oneof of `data` bytes or a `uri`."""

    data: bytes
    uri: str

    def WhichOneof(self, oneof_group: str) -> str | None: ...


@dataclass(frozen=True)
class UriPolicy:
    """Which URIs the server may read. No prefixes (the default) means no URIs at all.

    Prefixes look like "https://images.example.com/public/" or "file:///srv/media/". A prefix
    without a path gets "/" appended, so "https://a.example" cannot match "https://a.example.evil".
    Other http(s) prefixes match as plain strings: end them with "/" to mean a folder. A file
    prefix always names a folder.
    """

    allowed_prefixes: tuple[str, ...] = ()
    max_bytes: int = 64 * 1024 * 1024
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError("UriPolicy.max_bytes must be positive")
        if self.timeout_seconds <= 0:
            raise ValueError("UriPolicy.timeout_seconds must be positive")
        prefixes = tuple(_normalize_prefix(p) for p in self.allowed_prefixes)
        object.__setattr__(self, "allowed_prefixes", prefixes)

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_prefixes)

    def allows(self, uri: str) -> bool:
        """True when `uri` (normalized) starts with one of the allowed prefixes."""
        normalized = _normalize_uri(uri)
        return normalized is not None and normalized.startswith(self.allowed_prefixes)

    def file_roots(self) -> list[str]:
        """The allowed folders for file:// URIs, resolved as the URIs themselves will be."""
        return [
            os.path.realpath(unquote(urlsplit(p).path))
            for p in self.allowed_prefixes
            if p.startswith("file:")
        ]


def _normalize_prefix(prefix: str) -> str:
    parts = urlsplit(prefix.strip())
    scheme = parts.scheme.lower()
    if scheme not in URI_SCHEMES:
        raise ValueError(f"URI prefix {prefix!r}: only {', '.join(URI_SCHEMES)} are supported")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"URI prefix {prefix!r}: write file prefixes as file:///abs/folder/")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return urlunsplit(("file", "", path, "", ""))
    if not parts.hostname or "@" in parts.netloc:
        raise ValueError(f"URI prefix {prefix!r}: an http(s) prefix needs a host and no userinfo")
    normalized = _normalize_uri(prefix.strip())
    if normalized is None:
        raise ValueError(f"URI prefix {prefix!r} is not a URI")
    return normalized if parts.path else normalized + "/"


def _normalize_uri(uri: str) -> str | None:
    # Scheme and host are case-insensitive; lowering them stops "HTTPS://Host/" from dodging
    # a prefix. The path stays as sent. None for a URI that does not even parse.
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    rest = uri[len(parts.scheme) + 3 + len(parts.netloc) :]
    if not uri[len(parts.scheme) :].startswith("://"):
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{rest}"


def declared_format(image_pb: media_pb2.Image) -> str | None:
    """The format the client stated ("PNG", "JPEG", "WEBP"), or None when unspecified."""
    return _IMAGE_FORMATS.get(image_pb.format)


def image_bytes(image_pb: media_pb2.Image, *, field: str, policy: UriPolicy) -> bytes:
    """The encoded image bytes of `image_pb`, from `data` or (if the policy allows) its `uri`."""
    return media_bytes(image_pb, field=field, policy=policy, kind="image")


def media_bytes(message: _MediaMessage, *, field: str, policy: UriPolicy, kind: str) -> bytes:
    """Bytes of any media message with a `source` oneof (Image, Audio); `kind` is for messages."""
    source = message.WhichOneof("source")
    if source == "data":
        if not message.data:
            raise InvalidArgument.for_field(f"{field}.data", f"{kind} data is empty")
        return message.data
    if source == "uri":
        return fetch_uri(message.uri, field=f"{field}.uri", policy=policy)
    raise InvalidArgument.for_field(field, f"{kind} needs its bytes in data (or a uri)")


def load_image(
    image_pb: media_pb2.Image, *, field: str, policy: UriPolicy, limits: ImageLimits
) -> Image.Image:
    """image_bytes + decode_image: the RGB image a model gets, with every check applied.

    Blocking (it may read a file or fetch a URL): run it in the servicer's thread pool.
    """
    data = image_bytes(image_pb, field=field, policy=policy)
    source_field = f"{field}.{image_pb.WhichOneof('source')}"
    return decode_image(
        data, field=source_field, limits=limits, expected_format=declared_format(image_pb)
    )


def fetch_uri(uri: str, *, field: str, policy: UriPolicy) -> bytes:
    """Read an allowed file:// or http(s):// URI, or raise InvalidArgument for `field`."""
    if not policy.enabled:
        raise InvalidArgument.for_field(
            field, "URIs are disabled on this server; send the bytes in data"
        )
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in uri):
        raise InvalidArgument.for_field(field, "URI contains spaces or control characters")
    try:
        scheme = urlsplit(uri).scheme.lower()
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        raise InvalidArgument.for_field(field, "URI does not parse") from None
    if scheme not in URI_SCHEMES:
        raise InvalidArgument.for_field(field, f"URI scheme {scheme or '(none)'!r} is not allowed")
    if not policy.allows(uri):
        raise InvalidArgument.for_field(field, "URI is not under a prefix this server allows")
    if scheme == "file":
        return _read_file(uri, field=field, policy=policy)
    return _fetch_http(uri, field=field, policy=policy)


# ---------------------------------------------------------------------------------------------
# file://


def _read_file(uri: str, *, field: str, policy: UriPolicy) -> bytes:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise InvalidArgument.for_field(field, "file URIs must be file:///absolute/path")
    path = unquote(parts.path)
    if "\x00" in path:
        raise InvalidArgument.for_field(field, "file URI contains a NUL character")
    real = os.path.realpath(path)
    if not any(_is_within(real, root) for root in policy.file_roots()):
        raise InvalidArgument.for_field(field, "file URI resolves outside the allowed folders")
    return _read_regular_file(real, field=field, max_bytes=policy.max_bytes)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _read_regular_file(path: str, *, field: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO would otherwise hang the worker thread; fstat then refuses it.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InvalidArgument.for_field(field, "file URI names no existing file") from None
    except OSError as exc:
        raise InvalidArgument.for_field(field, f"file URI cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument.for_field(field, "file URI does not name a regular file")
        if info.st_size > max_bytes:
            raise InvalidArgument.for_field(field, _too_large(max_bytes))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # the file grew after fstat
        raise InvalidArgument.for_field(field, _too_large(max_bytes))
    return data


def _too_large(max_bytes: int) -> str:
    return f"the referenced media is larger than the limit of {max_bytes} bytes"


# ---------------------------------------------------------------------------------------------
# http(s)://


def _fetch_http(uri: str, *, field: str, policy: UriPolicy) -> bytes:
    if "@" in urlsplit(uri).netloc:
        raise InvalidArgument.for_field(field, "URI must not carry user info")
    if ".." in unquote(urlsplit(uri).path).replace("\\", "/").split("/"):
        # Servers normalize "/allowed/../private"; refuse instead of trusting them to.
        raise InvalidArgument.for_field(field, "URI path must not contain '..' segments")
    deadline = time.monotonic() + policy.timeout_seconds
    opener = _opener(lambda new_uri: _check_redirect(new_uri, field=field, policy=policy))
    request = urllib.request.Request(uri, headers={"User-Agent": "mmserve", "Accept": "*/*"})
    try:
        with opener.open(request, timeout=policy.timeout_seconds) as response:
            return _read_capped(
                response, field=field, max_bytes=policy.max_bytes, deadline=deadline
            )
    except urllib.error.HTTPError as exc:
        raise InvalidArgument.for_field(field, f"fetching the URI failed: HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise InvalidArgument.for_field(field, f"fetching the URI failed: {exc.reason}") from exc
    except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
        raise InvalidArgument.for_field(
            field, f"fetching the URI failed: {type(exc).__name__}: {exc}"
        ) from exc


def _check_redirect(new_uri: str, *, field: str, policy: UriPolicy) -> None:
    # An allowed host redirecting to an internal address is the classic SSRF bypass.
    scheme = urlsplit(new_uri).scheme.lower()
    if scheme not in ("http", "https") or not policy.allows(new_uri):
        raise InvalidArgument.for_field(field, "URI redirects outside the allowed prefixes")


class _PolicyRedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, check: Callable[[str], None]) -> None:
        super().__init__()
        self._check = check

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            self._check(newurl)
        except InvalidArgument:
            fp.close()  # urllib closes the redirect's body only when it follows it
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(check_redirect: Callable[[str], None]) -> urllib.request.OpenerDirector:
    # Built by hand rather than with build_opener: no FileHandler, FTPHandler or DataHandler,
    # so no redirect or bug can ever reach a scheme other than http(s).
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _PolicyRedirectHandler(check_redirect),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _read_capped(response: Any, *, field: str, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidArgument.for_field(field, _too_large(max_bytes))
    chunks: list[bytes] = []
    total = 0
    while True:
        # The socket timeout bounds each read; the deadline bounds a server that drips bytes.
        if time.monotonic() > deadline:
            raise InvalidArgument.for_field(field, "fetching the URI took too long")
        chunk = response.read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise InvalidArgument.for_field(field, _too_large(max_bytes))
        chunks.append(chunk)
