"""The playground's live omni session in headless Chromium with a fake microphone: Chromium
plays a WAV file (a spoken question, then silence; looped) as the microphone, the page pushes
it as PCM over grpc-web through Envoy to the real omni service (SmolLM2, Whisper, Piper, Silero
VAD), and shows the transcript, the streamed reply and plays its speech. Questions are spoken by
Piper and by espeak-ng. Also: barge-in in audio duplex, pause and resume, a Chat served while a
session listens, closing the tab closing the session, the page on an insecure origin, and a
voice registered from the browser."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import static
from gateway.catalog import capability
from gateway.processes import REPO
from gateway.render import EdgeConfig
from gateway.stack import ServiceGroup, Stack, StackConfig
from mmserve.common.v1 import chat_pb2
from mmserve.omni.v1 import omni_pb2, omni_pb2_grpc
from tests.e2e.conftest import SERVICE_ENV
from tests.e2e.live_audio import espeak_missing, espeak_question, piper_question

# A stack start plus a browser scenario on two shared cores.
pytestmark = pytest.mark.timeout(900)

WEB = REPO / "clients" / "web"
DRIVER = Path(__file__).with_name("web") / "live-page.mjs"
ARTIFACTS = REPO / "build" / "test-artifacts" / "live-session"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
QUESTION = "What is the capital of France?"
STORY = "Tell me a long story about the sea."
# A Chat issued while a session listens must not wait for the session to end: the session
# takes the device only while a turn computes.
CHAT_DURING_SESSION_S = 30.0
# Sessions left without a reader or input are closed after this many seconds.
ORPHAN_TIMEOUT_S = 5.0


@dataclass
class Live:
    stack: Stack
    url: str
    wavs: Path


def _omni_args(data_dir: Path) -> tuple[str, ...]:
    return (
        "--data-dir", str(data_dir), "--log-level", "INFO", "--heartbeat-seconds", "2",
        "--session-orphan-timeout-seconds", str(ORPHAN_TIMEOUT_S),
    )  # fmt: skip


@contextlib.contextmanager
def _live_stack(tmp: Path, *model: str) -> Iterator[Live]:
    """The omni service behind Envoy, with the playground served at the edge's own URL
    (127.0.0.1: a secure context, so the page may use the microphone and camera)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium", pytrace=False)
    if not (WEB / "node_modules" / ".bin" / "vite").exists():
        pytest.fail("the playground's packages are missing: run `npm ci` in clients/web")
    dist = static.ensure_built(WEB, say=lambda text: None)
    group = ServiceGroup(capability("omni"), args=(*_omni_args(tmp / "omni-data"), *model))
    config = StackConfig(
        groups=[group],
        port=0,
        admin_port=0,
        run_dir=tmp / "run",
        ready_timeout=300,
        stop_grace=20,
        env=SERVICE_ENV,
        edge=EdgeConfig(upstreams=(), edge_endpoints=(), descriptor_path=""),
        playground=dist,
    )
    stack = Stack(config)
    stack.start()
    try:
        stack.wait_ready()
        assert stack.playground_url
        wavs = tmp / "wavs"
        wavs.mkdir()
        yield Live(stack, stack.playground_url, wavs)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The default built-in model: SmolLM2 with Whisper, Piper and Silero VAD."""
    with _live_stack(tmp_path_factory.mktemp("live")) as stack:
        yield stack


def drive(scenario: str, url: str, timeout: float = 420, **config: Any) -> dict[str, Any]:
    """Runs one scenario of live-page.mjs; the page's results as a dict."""
    settings = {"scenario": scenario, "url": url, "artifacts": str(ARTIFACTS), **config}
    done = subprocess.run(
        ["node", str(DRIVER), json.dumps(settings)],
        env={**os.environ, "MMSERVE_WEB_DIR": str(WEB)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    (ARTIFACTS / f"{scenario}.json").write_text(json.dumps(results, indent=1))
    assert "error" not in results, (results["error"], results["steps"], results["log"][-30:])
    return results


def _words(text: str) -> set[str]:
    return set("".join(c.lower() if c.isalnum() else " " for c in text).split())


@pytest.fixture(scope="module")
def conversation(live: Live) -> dict[str, Any]:
    """Half duplex, a question by Piper followed by 30 s of silence (it comes again after that,
    beyond the scenario): one turn, a Chat meanwhile, pause and resume, then the tab closed."""
    wav = piper_question(live.wavs / "piper.wav", QUESTION, silence_s=30)
    return drive(
        "conversation",
        f"{live.url}#omni",
        wav=str(wav),
        mode=omni_pb2.SESSION_MODE_HALF_DUPLEX,
        maxTokens=24,
        chatTimeoutMs=CHAT_DURING_SESSION_S * 1000,
    )


def test_spoken_question_gives_transcript_text_and_played_speech(
    conversation: dict[str, Any],
) -> None:
    opened = conversation["steps"]["opened"]
    assert opened["state"] in ("listening", "responding"), opened
    assert opened["capture"] == "worklet", opened
    # SmolLM2 takes no images: no camera.
    assert not opened["buttons"]["omni-live-camera"], opened
    assert int(opened["micRate"]) > 0
    turn = conversation["steps"]["turn"]
    assert turn["state"] != "closed", turn
    # The transcript: what Whisper heard of Piper's question.
    assert int(turn["transcripts"]) >= 1, turn
    assert turn["heard"][0] == QUESTION, turn["heard"]
    # The streamed reply: several deltas, shown as one text that answers.
    assert int(turn["deltas"]) >= 2, turn
    assert "paris" in _words(turn["replies"][0]), turn["replies"]
    # Its speech: chunks scheduled as Web Audio buffers, and played (the output clock ran).
    assert int(turn["audioBuffers"]) == int(turn["audioChunks"]) >= 2, turn
    assert float(turn["audioSeconds"]) > 0.5, turn
    assert float(turn["playedSeconds"]) > 0, turn
    assert turn["outputState"] == "running", turn
    assert turn["lastFinish"] == "STOP", turn
    # Pushed at the session's rate, 100 ms a chunk: many chunks, none refused.
    assert int(turn["pushed"]) >= 20, turn
    assert "problem" not in turn, turn


def test_pause_stops_input_and_resume_restarts_it(conversation: dict[str, Any]) -> None:
    pause = conversation["steps"]["pause"]
    at_pause, later, resumed, after = (
        pause["atPause"],
        pause["later"],
        pause["resumed"],
        pause["after"],
    )
    assert at_pause["state"] == "paused"
    assert at_pause["buttons"]["omni-live-resume"]
    assert not at_pause["buttons"]["omni-live-pause"]
    # Nothing is pushed while paused (one push may have been in flight at the click).
    assert int(later["pushed"]) - int(at_pause["pushed"]) <= 1, (at_pause, later)
    assert later["state"] == "paused"
    assert resumed["state"] in ("listening", "responding")
    assert int(after["pushed"]) >= int(resumed["pushed"]) + 5
    assert "problem" not in after, after


def test_a_chat_is_served_while_a_session_listens(conversation: dict[str, Any]) -> None:
    """The half-duplex session takes the device only while a turn computes, so the panel's
    Chat runs while the session listens (the session is still open afterwards)."""
    chat = conversation["steps"]["chat"]
    assert chat["served"], chat
    assert chat["state"] == "done", chat
    assert chat["reply"], chat
    assert chat["session"]["state"] in ("listening", "responding"), chat
    assert chat["seconds"] < CHAT_DURING_SESSION_S


def test_closing_the_tab_closes_the_session(conversation: dict[str, Any], live: Live) -> None:
    session_id = conversation["sessionId"]
    assert session_id
    with grpc.insecure_channel(live.stack.address) as channel:
        stub = omni_pb2_grpc.OmniServiceStub(channel)
        # The closed session's stream is one CLOSED event with the reason: the page's
        # pagehide handler closed it (CloseSession as a keepalive fetch).
        deadline = time.monotonic() + ORPHAN_TIMEOUT_S + 10
        while not (reason := _closed_reason(stub, session_id)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert reason == "closed by client", reason
        # The device is free: a Chat is served at once.
        started = time.monotonic()
        reply = stub.Chat(
            omni_pb2.ChatRequest(
                messages=[
                    omni_pb2.ChatMessage(
                        role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Say hi.")]
                    )
                ],
                sampling=chat_pb2.SamplingParams(max_new_tokens=4),
            ),
            timeout=60,
        )
        assert reply.text
        assert time.monotonic() - started < 30


def _closed_reason(stub: omni_pb2_grpc.OmniServiceStub, session_id: str) -> str:
    """The reason a session closed, or "" while it is open (its stream then stays open)."""
    call = stub.StreamSessionEvents(
        omni_pb2.StreamSessionEventsRequest(session_id=session_id), timeout=3
    )
    try:
        for event in call:
            if event.WhichOneof("event") == "state":
                if event.state.state == omni_pb2.SESSION_STATE_CLOSED:
                    return event.state.reason
                return ""
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ""
        raise
    finally:
        call.cancel()
    return ""


def test_a_question_by_espeak_through_the_script_processor(live: Live) -> None:
    """A voice the recognizer was not tuned on, captured by the ScriptProcessor fallback."""
    # `make install-system` installs espeak-ng: a missing voice is a broken install.
    missing = espeak_missing()
    assert not missing, missing
    wav = espeak_question(live.wavs / "espeak.wav", QUESTION, silence_s=30)
    results = drive(
        "turn",
        f"{live.url}?capture=script#omni",
        wav=str(wav),
        mode=omni_pb2.SESSION_MODE_HALF_DUPLEX,
        maxTokens=16,
    )
    turn = results["steps"]["turn"]
    assert turn["capture"] == "script", turn
    assert int(turn["transcripts"]) >= 1, turn
    heard = _words(turn["heard"][0])
    assert {"capital", "france"} & heard, turn["heard"]
    assert int(turn["deltas"]) >= 1, turn
    assert turn["replies"][0], turn
    assert int(turn["audioBuffers"]) >= 1, turn
    closed = results["steps"]["closed"]
    assert closed["reason"] == "closed by client", closed
    assert not closed["buttons"]["omni-live-close"]
    assert closed["buttons"]["omni-live-start"]


def test_chat_mode_takes_typed_turns(live: Live) -> None:
    results = drive(
        "chatMode",
        f"{live.url}#omni",
        mode=omni_pb2.SESSION_MODE_CHAT,
        maxTokens=16,
        text=QUESTION,
    )
    chat = results["steps"]["chatMode"]
    assert chat["textVisible"]
    assert chat["capture"] == "", chat  # no microphone in CHAT mode
    assert chat["lastFinish"] == "STOP", chat
    assert chat["heard"] == [QUESTION], chat
    assert "paris" in _words(chat["replies"][0]), chat
    assert int(chat["audioBuffers"]) >= 1, chat


def test_the_record_and_send_chat_still_works(live: Live) -> None:
    """The panel's older path: a clip recorded from the microphone, sent as one Chat."""
    wav = piper_question(live.wavs / "piper-record.wav", QUESTION, silence_s=30)
    results = drive("recordChat", f"{live.url}#omni", wav=str(wav), recordMs=4000)
    chat = results["steps"]["recordChat"]
    assert float(chat["recorded"]) >= 3, chat
    assert chat["state"] == "done", chat
    assert "paris" in _words(chat["reply"]), chat


def test_barge_in_interrupts_the_reply_and_its_playback(live: Live) -> None:
    """Audio duplex: the looped question comes again 14 s after it ended, while the long reply
    still plays (its first audio comes within a few seconds, even on a loaded machine); the
    reply stops, its queued speech is cut, and the new speech is heard."""
    wav = piper_question(live.wavs / "story.wav", STORY, silence_s=14)
    results = drive(
        "bargeIn",
        f"{live.url}#omni",
        wav=str(wav),
        mode=omni_pb2.SESSION_MODE_AUDIO_DUPLEX,
        maxTokens=160,
    )
    barge = results["steps"]["bargeIn"]
    assert int(barge["bargeIns"]) >= 1, barge
    assert barge["lastFinish"] == "CANCELLED", barge
    assert barge["interrupted"] >= 1, barge
    # Playback was cut while speech was still queued.
    assert int(barge["flushes"]) >= 1, barge
    assert float(barge["lastCut"]) > 0, barge
    assert float(barge["playedSeconds"]) < float(barge["audioSeconds"]), barge
    following = results["steps"]["next"]
    assert STORY in following["heard"], following["heard"]
    assert results["steps"]["closed"]["reason"] == "closed by client"


def test_an_insecure_origin_says_why_there_is_no_microphone(live: Live) -> None:
    port = live.stack.address.rsplit(":", 1)[1]
    results = drive(
        "insecure",
        f"http://playground.test:{port}/#omni",
        hostRules="MAP playground.test 127.0.0.1",
    )
    insecure = results["steps"]["insecure"]
    assert insecure["secure"] is False
    assert insecure["visible"]
    assert "not a secure context" in insecure["warning"]
    assert "make cert" in insecure["warning"]
    assert not insecure["startEnabled"]


def test_a_voice_registered_from_the_browser(live: Live) -> None:
    sample = piper_question(
        live.wavs / "sample.wav", "This is my voice, clear and steady, for you.", 0.5
    )
    results = drive(
        "voices", f"{live.url}#omni", sample=str(sample), wav=str(sample), recordMs=4000
    )
    voices = results["steps"]["voices"]
    assert voices["before"] == "0"
    assert voices["voiceId"].startswith("voice-"), voices
    assert voices["registered"] == "1"
    assert any("Browser sample" in item for item in voices["listed"])
    # Piper cannot clone: the page says so, and offers the voice disabled.
    assert voices["cloning"] == "false"
    assert "cannot clone" in voices["note"]
    option = next(o for o in voices["options"] if o["value"] == voices["voiceId"])
    assert option["disabled"]
    assert voices["after"] == "0"
    # A sample recorded with the page's microphone is registered the same way.
    assert any("Recorded sample" in item for item in voices["recorded"]), voices


def test_the_microphone_resampler(tmp_path: Path) -> None:
    """The page's resampler (device rate to the session's 16 kHz): unity gain in the voice
    band, more than 50 dB below for a tone above the new Nyquist frequency (no aliasing), the
    expected length (less the kernel's delay), and streaming in odd blocks equal to one call."""
    esbuild = REPO / "tools" / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.fail("tools/node_modules lacks esbuild: run `make install-node`")
    bundle = tmp_path / "resample.mjs"
    source = WEB / "src" / "live" / "resample.ts"
    built = subprocess.run(
        [str(esbuild), str(source), "--bundle", "--format=esm", f"--outfile={bundle}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    checked = subprocess.run(
        ["node", str(DRIVER.with_name("resample-check.mjs")), str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    for case in json.loads(checked.stdout):
        assert abs(case["gain"] - 1) < 0.01, case
        assert case["aliased"] < 10 ** (-50 / 20), case
        assert 0 <= case["expectedLength"] - case["length"] <= 32, case
        assert case["streamedLength"] == case["length"], case
        assert case["maxDiff"] < 1e-6, case


def test_the_camera_sends_frames_in_omni_duplex(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A model with image input (the tiny random-weight Qwen2.5-Omni) offers OMNI_DUPLEX; the
    camera (Chromium's fake one) sends JPEG frames the service takes, and a spoken turn is
    answered. The default model has no image input: there the camera stays off."""
    tmp = tmp_path_factory.mktemp("live-video")
    model = ("--model", "builtin:tiny-qwen2.5-omni", "--talker-max-new-tokens", "16")
    with _live_stack(tmp, *model) as video:
        wav = piper_question(video.wavs / "piper.wav", QUESTION, silence_s=30)
        results = drive(
            "camera",
            f"{video.url}#omni",
            wav=str(wav),
            mode=omni_pb2.SESSION_MODE_OMNI_DUPLEX,
            maxTokens=8,
            speech=False,
        )
    before, camera = results["steps"]["cameraBefore"], results["steps"]["camera"]
    assert before["buttons"]["omni-live-camera"], before
    assert camera["preview"]
    assert camera["label"] == "Camera off"
    assert int(camera["frames"]) >= 2, camera
    turn = results["steps"]["turn"]
    assert int(turn["turns"]) >= 1, turn
    # Every pushed chunk, frames included, was taken: nothing refused.
    assert "problem" not in turn, turn
    assert results["steps"]["cameraOff"] == {"preview": False, "label": "Camera on"}
    assert results["steps"]["closed"]["reason"] == "closed by client"


def test_a_killed_browser_frees_the_session_within_the_orphan_timeout(live: Live) -> None:
    """Chromium killed with SIGKILL (no pagehide, no CloseSession): the session loses its
    reader and its input, and the service closes it after the orphan timeout."""
    wav = piper_question(live.wavs / "piper-abandon.wav", QUESTION, silence_s=30)
    settings = {
        "scenario": "abandon",
        "url": f"{live.url}#omni",
        "artifacts": str(ARTIFACTS),
        "wav": str(wav),
        "mode": omni_pb2.SESSION_MODE_HALF_DUPLEX,
    }
    driver = subprocess.Popen(
        ["node", str(DRIVER), json.dumps(settings)],
        env={**os.environ, "MMSERVE_WEB_DIR": str(WEB)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # node and Chromium in one process group, killed together
    )
    try:
        session_id = _read_session_id(driver, timeout=120)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    with grpc.insecure_channel(live.stack.address) as channel:
        stub = omni_pb2_grpc.OmniServiceStub(channel)
        # Probing earlier would itself be a reader: look once, after the bound (the timeout,
        # the watchdog's period and Envoy noticing the dropped stream).
        time.sleep(ORPHAN_TIMEOUT_S + 4)
        reason = _closed_reason(stub, session_id)
        assert reason.startswith("orphaned"), reason
        reply = stub.Chat(
            omni_pb2.ChatRequest(
                messages=[
                    omni_pb2.ChatMessage(
                        role=chat_pb2.ROLE_USER, content=[omni_pb2.ContentPart(text="Say hi.")]
                    )
                ],
                sampling=chat_pb2.SamplingParams(max_new_tokens=4),
            ),
            timeout=60,
        )
        assert reply.text


def _read_session_id(driver: subprocess.Popen[str], timeout: float) -> str:
    """The id the driver prints once its session listens (bounded)."""
    assert driver.stdout is not None
    found: list[str] = []

    def read() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            if line.startswith("SESSION "):
                found.append(line.split()[1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, "the page opened no session in time"
    return found[0]
