"""The URI policy (services/runtime/media.py) on every RPC that takes media.

The servers allow exactly two prefixes: a file folder (`allowed/`) and a loopback HTTP folder
(`http://127.0.0.1:<port>/allowed/`). Everything else must be INVALID_ARGUMENT naming the
`...uri` field, at once (a FIFO must not block a worker, a 10 GB Content-Length must not be
read), and the loopback HTTP server must never be asked for anything outside its allowed
folder (no SSRF, redirects included). A file and a URL under the prefixes are used, which shows
the refusals come from the policy and not from URIs being broken altogether.
"""

from __future__ import annotations

import base64

import grpc
import pytest

from mmserve.common.v1 import media_pb2
from tests.reliability.inputs.checks import assert_clean, record, still_serving
from tests.reliability.inputs.fleet import HttpMedia, MediaRoot, Served
from tests.reliability.inputs.slots import (
    IMAGE,
    NO_EDITS,
    Slot,
    all_slots,
    refused_before_reading,
)
from tests.reliability.inputs.test_hostile_files import accepted_codes, live_session


def refused_uris(root: MediaRoot, web: HttpMedia, ext: str) -> dict[str, str]:
    allowed, outside = root.allowed, root.outside
    return {
        # schemes never fetched
        "ftp": f"ftp://127.0.0.1:{web.port}/allowed/ok.{ext}",
        "gopher": f"gopher://127.0.0.1:{web.port}/_GET%20/allowed/ok.{ext}",
        "data": "data:image/png;base64," + base64.b64encode(root.png).decode(),
        "jar": f"jar:file://{allowed}/ok.{ext}!/x",
        "javascript": "javascript:alert(1)",
        "no_scheme_path": f"{allowed}/ok.{ext}",
        "scheme_relative": f"//127.0.0.1:{web.port}/allowed/ok.{ext}",
        "empty": "",
        "unparsable": "http://[::1",
        "control_chars": f"file://{allowed}/ok.{ext}\r\nX: y",
        # files outside the allowed folder
        "etc_passwd": "file:///etc/passwd",
        "proc_self_environ": "file:///proc/self/environ",
        "outside_folder": f"file://{outside}/secret.{ext}",
        "dot_dot": f"file://{allowed}/../outside/secret.{ext}",
        "encoded_dot_dot": f"file://{allowed}/%2e%2e/outside/secret.{ext}",
        "symlink_out": f"file://{allowed}/link_out.png",
        "file_remote_host": f"file://evil.example{allowed}/ok.{ext}",
        "nul_byte": f"file://{allowed}/ok.{ext}%00.txt",
        # inside, but not a readable regular file of a sane size
        "fifo": f"file://{allowed}/fifo.png",
        "directory": f"file://{allowed}/sub/",
        "missing": f"file://{allowed}/missing.{ext}",
        "sparse_200mb": f"file://{allowed}/sparse.png",
        # http: loopback and link-local outside the prefix, tricks, redirects
        "loopback_private": web.url(f"/private/secret.{ext}"),
        "loopback_other_port": f"http://127.0.0.1:{web.port + 1}/allowed/ok.{ext}",
        "loopback_by_name": f"http://localhost:{web.port}/allowed/ok.{ext}",
        "loopback_ipv6": f"http://[::1]:{web.port}/allowed/ok.{ext}",
        "loopback_decimal": f"http://2130706433:{web.port}/allowed/ok.{ext}",
        "link_local_metadata": "http://169.254.169.254/latest/meta-data/",
        "https_downgrade": f"https://127.0.0.1:{web.port}/allowed/ok.{ext}",
        "userinfo": f"http://user:pw@127.0.0.1:{web.port}/allowed/ok.{ext}",
        "userinfo_host_confusion": f"http://127.0.0.1:{web.port}@169.254.169.254/allowed/ok.{ext}",
        "dot_dot_http": web.url(f"/allowed/../private/secret.{ext}"),
        "encoded_dot_dot_http": web.url(f"/allowed/%2e%2e/private/secret.{ext}"),
        "redirect_outside": web.url("/allowed/redirect-private"),
        "redirect_to_file": web.url("/allowed/redirect-file"),
        "declared_10gb": web.url("/allowed/huge.png"),
        "not_found": web.url(f"/allowed/missing.{ext}"),
    }


def allowed_uris(root: MediaRoot, web: HttpMedia, ext: str) -> dict[str, str]:
    return {
        "file_in_folder": f"file://{root.allowed}/ok.{ext}",
        "http_in_folder": web.url(f"/allowed/ok.{ext}"),
        "scheme_case": web.url(f"/allowed/ok.{ext}").replace("http://", "HTTP://"),
    }


def _uri_media(slot: Slot, uri: str) -> media_pb2.Image | media_pb2.Audio:
    return media_pb2.Image(uri=uri) if slot.kind == IMAGE else media_pb2.Audio(uri=uri)


@pytest.mark.parametrize("slot", all_slots(), ids=str)
def test_uri_policy(
    slot: Slot, fleet: dict[str, Served], media_root: MediaRoot, http_media: HttpMedia
) -> None:
    served = fleet[slot.capability]
    if refused_before_reading(served, slot):
        pytest.skip(NO_EDITS)
    ext = "png" if slot.kind == IMAGE else "wav"
    accepted = accepted_codes(served, slot)
    if slot.rpc_name == "RegisterVoice":
        # A 0.5 s sample is read through the URI, then refused for its length, not its URI.
        accepted = {grpc.StatusCode.INVALID_ARGUMENT}
    field = f"{slot.field}.uri"
    asked_before = len(http_media.requested)
    problems: list[str] = []
    if slot.prepare is not None:
        slot.prepare(served)
    session_context = live_session(served) if slot.needs_session else None
    session = session_context.__enter__() if session_context else None
    try:
        for name, uri in refused_uris(media_root, http_media, ext).items():
            request = slot.build(_uri_media(slot, uri))
            outcome = session.push(request) if session else served.call(slot.rpc_name, request)
            record("disallowed URIs", outcome)
            problems += [f"{name} {uri!r}: {p}" for p in outcome.problems()]
            if outcome.code is not grpc.StatusCode.INVALID_ARGUMENT or field not in (
                outcome.violations
            ):
                problems.append(f"{name} {uri!r}: wanted INVALID_ARGUMENT on {field}: {outcome}")
        for name, uri in allowed_uris(media_root, http_media, ext).items():
            request = slot.build(_uri_media(slot, uri))
            outcome = session.push(request) if session else served.call(slot.rpc_name, request)
            record("allowed URIs (controls)", outcome)
            problems += [f"{name} {uri!r}: {p}" for p in outcome.problems()]
            if outcome.code not in accepted or (
                outcome.code is grpc.StatusCode.INVALID_ARGUMENT and field in outcome.violations
            ):
                problems.append(f"{name} {uri!r}: wanted it read: {outcome}")
    finally:
        if session_context is not None:
            session_context.__exit__(None, None, None)
    fetched = http_media.requested[asked_before:]
    leaked = [path for path in fetched if not path.startswith("/allowed/")]
    if leaked:
        problems.append(f"the server fetched paths outside the allowed prefix: {leaked}")
    assert_clean(problems + still_serving(served, f"URIs to {slot}"))
