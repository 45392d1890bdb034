"""The `mmserve` CLI as a user runs it (a subprocess) against real servers: every subcommand that
has a server here, JSON output, files written, exit codes per gRPC status, queue position and
progress on stderr, and Ctrl-C cancelling the server job."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmserve_client import Cancelled, JobState, T2IClient
from mmserve_client.audio import decode_wav
from tests.clients.helpers import cli_command, cli_env, png, run_cli, wait_for_state
from tests.clients.servers import API_KEY, Served


def target(server: Served) -> list[str]:
    return ["--target", server.target]


# --- t2i ---


def test_generate_writes_the_image_and_shows_steps(t2i_server: Served, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    result = run_cli(
        "generate", "a red fox", "-s", "3", "--seed", "5", "-o", str(out), *target(t2i_server)
    )
    assert result.code == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    assert "3/3 steps" in result.stderr
    assert f"wrote {out}" in result.stdout
    assert "seed 5" in result.stdout


def test_generate_json_with_several_images(t2i_server: Served, tmp_path: Path) -> None:
    result = run_cli(
        "--json",
        "generate",
        "a cat",
        "-s",
        "2",
        "--seed",
        "9",
        "--num-images",
        "2",
        "--format",
        "jpeg",
        "-o",
        str(tmp_path / "cat"),
        *target(t2i_server),
    )
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["seed"] == 9
    assert report["files"] == [str(tmp_path / "cat-0.jpg"), str(tmp_path / "cat-1.jpg")]
    assert all(Path(f).read_bytes().startswith(b"\xff\xd8") for f in report["files"])
    assert report["usage"]["run_seconds"] > 0
    job = run_cli("--json", "job", "t2i", report["job_id"], *target(t2i_server))
    assert job.code == 0
    assert job.json()["state"] == "succeeded"


def test_invalid_request_exits_13_with_field_violations(t2i_server: Served) -> None:
    result = run_cli("generate", "a fox", "-W", "65", *target(t2i_server))
    assert result.code == 13  # 10 + INVALID_ARGUMENT
    assert "params.width" in result.stderr
    as_json = run_cli("--json", "generate", "a fox", "-W", "65", *target(t2i_server))
    assert as_json.code == 13
    error = as_json.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == ["params.width"]


def test_generate_scheduler_and_lora_flags(t2i_server: Served, tmp_path: Path) -> None:
    out = tmp_path / "euler.png"
    args = ["-s", "2", "--seed", "4", "-g", "3.5", "-n", "blurry", *target(t2i_server)]
    result = run_cli(
        "generate", "a fox", "--scheduler", "EulerDiscreteScheduler", "-o", str(out), *args
    )
    assert result.code == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    refused = run_cli("--json", "generate", "a fox", "--lora", "ink:0.5", "--lora", "x", *args)
    assert refused.code == 13
    error = refused.json()["error"]
    assert [v["field"] for v in error["field_violations"]] == [
        "params.adapters[0].name",
        "params.adapters[1].name",
    ]
    bad = run_cli("generate", "a fox", "--lora", "ink:lots", *args)
    assert bad.code == 2
    assert "WEIGHT must be a number" in bad.stderr


def test_edit_and_previews(t2i_server: Served, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(png())
    result = run_cli(
        "edit",
        str(source),
        "a blue cat",
        "-s",
        "4",
        "--strength",
        "0.5",
        "--seed",
        "1",
        "-o",
        str(tmp_path / "out.png"),
        "--preview-every",
        "1",
        "--preview-dir",
        str(tmp_path / "previews"),
        *target(t2i_server),
    )
    assert result.code == 0, result.stderr
    assert Image.open(tmp_path / "out.png").size == (64, 64)
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == [
        "preview-0001.png",
        "preview-0002.png",
    ]


# --- vl ---


def test_ask_streams_the_answer(vl_server: Served, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(png())
    args = ["What is this?", "-i", str(image), "--max-new-tokens", "5", "--seed", "3"]
    streamed = run_cli("ask", *args, *target(vl_server))
    assert streamed.code == 0, streamed.stderr
    assert "5 generated tokens" in streamed.stderr
    unary = run_cli("--json", "ask", *args, "--no-stream", *target(vl_server))
    assert unary.code == 0, unary.stderr
    reply = unary.json()
    assert reply["finish_reason"] == "length"
    assert streamed.stdout.rstrip("\n") == reply["text"]  # greedy: the same text both ways


# --- vision ---


def test_embed_similarity_classify_rank(vision_server: Served, tmp_path: Path) -> None:
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    red.write_bytes(png(color=(220, 20, 20)))
    blue.write_bytes(png(color=(20, 20, 220)))
    vectors = tmp_path / "vectors.npy"
    embed = run_cli(
        "embed",
        "--image",
        str(red),
        "--text",
        "a red square",
        "-o",
        str(vectors),
        *target(vision_server),
    )
    assert embed.code == 0, embed.stderr
    matrix = np.load(vectors)
    assert matrix.shape[0] == 2
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)

    similarity = run_cli(
        "--json",
        "similarity",
        "-Q",
        str(red),
        "-Q",
        "text:a red square",
        "-C",
        str(blue),
        "-C",
        "a dog",
        *target(vision_server),
    )
    assert similarity.code == 0, similarity.stderr
    scores = np.asarray(similarity.json()["scores"])
    assert scores.shape == (2, 2)
    assert scores[1, 0] == np.float32(scores[1, 0])  # plain floats, JSON-safe

    classify = run_cli(
        "--json",
        "classify",
        str(red),
        str(blue),
        "-l",
        "cat,dog",
        "-l",
        "car",
        "-k",
        "2",
        *target(vision_server),
    )
    assert classify.code == 0, classify.stderr
    found = classify.json()["classifications"]
    assert [c["image"] for c in found] == [str(red), str(blue)]
    assert all(len(c["labels"]) == 2 for c in found)

    rank = run_cli(
        "--json",
        "rank",
        "a red square",
        str(blue),
        "a red square",
        "a dog",
        "-k",
        "1",
        *target(vision_server),
    )
    assert rank.code == 0, rank.stderr
    assert rank.json()["results"][0]["index"] == 1  # the identical text


# --- omni ---


def test_chat_streams_text_and_writes_speech(omni_server: Served, tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    result = run_cli(
        "chat", "Say hello.", "--max-new-tokens", "6", "-o", str(out), *target(omni_server)
    )
    assert result.code == 0, result.stderr
    assert result.stdout.strip()
    assert f"wrote {out}" in result.stderr
    clip = decode_wav(out.read_bytes())
    assert clip.duration > 0.2
    said = run_cli(
        "--json",
        "say",
        "Good morning",
        "--max-new-tokens",
        "6",
        "-o",
        str(tmp_path / "s.wav"),
        *target(omni_server),
    )
    assert said.code == 0, said.stderr
    assert said.json()["audio"]["path"] == str(tmp_path / "s.wav")
    assert said.json()["audio"]["seconds"] > 0.2
    voices = run_cli("voices", *target(omni_server))
    assert voices.code == 0
    assert voices.stdout.strip()


def test_say_speaks_the_text_verbatim_and_transcribe_hears_it(
    omni_server: Served, tmp_path: Path
) -> None:
    phrase = "Hello there, this is a test of the speech."
    out = tmp_path / "hello.mp3"
    said = run_cli("--json", "say", phrase, "-o", str(out), *target(omni_server))
    assert said.code == 0, said.stderr
    facts = said.json()
    assert facts["audio"]["format"] == "mp3"  # from the suffix
    assert facts["audio"]["path"] == str(out)
    assert facts["audio"]["seconds"] > 1.0
    assert out.read_bytes()
    heard = run_cli("--json", "transcribe", str(out), *target(omni_server))
    assert heard.code == 0, heard.stderr
    spoken = heard.json()
    assert _words(spoken["text"]) == _words(phrase)
    assert spoken["language"] == "en"
    assert spoken["segments"][0]["end"] > spoken["segments"][0]["start"]
    unary_wav = tmp_path / "hello.wav"
    said = run_cli("say", phrase, "--no-stream", "-o", str(unary_wav), *target(omni_server))
    assert said.code == 0, said.stderr
    assert f"wrote {unary_wav}" in said.stderr
    lines = run_cli("transcribe", str(unary_wav), "--segments", *target(omni_server))
    assert lines.code == 0, lines.stderr
    assert re.match(r"\[\s*0\.\d+ ->\s*\d+\.\d+\] Hello there", lines.stdout)
    empty = run_cli("say", "  ", "-o", str(tmp_path / "x.wav"), *target(omni_server))
    assert empty.code == 13  # 10 + INVALID_ARGUMENT
    assert "text" in empty.stderr


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


# --- every service ---


def test_health_info_job_and_their_exit_codes(vision_server: Served) -> None:
    health = run_cli("health", "vision", *target(vision_server))
    assert (health.code, health.stdout.strip()) == (0, "vision: serving")
    down = run_cli("health", "vision", "--target", "127.0.0.1:9")  # nothing listens there
    assert down.code == 24  # 10 + UNAVAILABLE
    info = run_cli("--json", "info", "vision", *target(vision_server))
    assert info.code == 0
    assert info.json()["model"]["family"] == "clip"
    assert info.json()["extras"]["supports_text"] is True
    missing = run_cli("job", "vision", "no-such-job", *target(vision_server))
    assert missing.code == 15  # 10 + NOT_FOUND
    cancel = run_cli("cancel", "vision", "no-such-job", *target(vision_server))
    assert cancel.code == 15


def test_api_key_from_flag_or_environment(sleepy_server: Served, tmp_path: Path) -> None:
    args = ["generate", "a cat", "-s", "1", "-o", str(tmp_path / "x.png"), *target(sleepy_server)]
    refused = run_cli(*args)
    assert refused.code == 26  # 10 + UNAUTHENTICATED
    assert run_cli(*args, "--api-key", API_KEY).code == 0
    env = {**cli_env(), "MMSERVE_API_KEY": API_KEY}
    done = subprocess.run(cli_command(*args), env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0


# --- queueing and Ctrl-C ---


class Reader:
    """Collects a subprocess's stderr lines in a thread, so waits on them are bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(target=lambda: [self.lines.put(x) for x in stream], daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} in {self.seen}")

    def rest(self, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                break
        return "".join(self.seen)


def start_cli(*args: str) -> tuple[subprocess.Popen[str], Reader]:
    process = subprocess.Popen(
        cli_command(*args),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, Reader(process)


def test_ctrl_c_cancels_the_server_job(sleepy_server: Served, tmp_path: Path) -> None:
    process, reader = start_cli(
        "generate",
        "slow",
        "-s",
        "400",
        "-o",
        str(tmp_path / "never.png"),
        "--api-key",
        API_KEY,
        *target(sleepy_server),
    )
    try:
        reader.wait_for(r" 3/400 steps")
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI went on after Ctrl-C; it printed {reader.seen!r}")
        assert code == 130
    finally:
        if process.poll() is None:
            process.kill()
    found = re.search(r"interrupted: job ([0-9a-f-]{36}) (\w+)", reader.rest())
    assert found, reader.seen
    with T2IClient(sleepy_server.target, api_key=API_KEY) as client:
        job = wait_for_state(client, found.group(1), JobState.CANCELLED)
        assert job.step < 400
        started = time.monotonic()
        client.generate("next", steps=1, timeout=10)  # the device is free again
        assert time.monotonic() - started < 5
    assert not (tmp_path / "never.png").exists()


def test_queue_position_is_shown_while_waiting(sleepy_server: Served, tmp_path: Path) -> None:
    with T2IClient(sleepy_server.target, api_key=API_KEY) as client:
        with client.stream_generate("blocker", steps=600) as blocker:  # 30 s unless closed
            next(blocker)
            next(blocker)  # running
            process, reader = start_cli(
                "--json",
                "generate",
                "queued",
                "-s",
                "2",
                "-o",
                str(tmp_path / "q.png"),
                "--api-key",
                API_KEY,
                *target(sleepy_server),
            )
            try:
                found = reader.wait_for(r"queued: position (\d+) of (\d+)")
                assert found.group(1) == "1"
                blocker.close()
                process.wait(timeout=30)
                assert process.stdout is not None
                stdout = process.stdout.read()  # one JSON line: no pipe can fill up
            finally:
                if process.poll() is None:
                    process.kill()
    assert process.returncode == 0
    assert json.loads(stdout)["files"] == [str(tmp_path / "q.png")]
    assert "2/2 steps" in reader.rest()


def test_cancel_and_job_commands_on_a_running_job(sleepy_server: Served) -> None:
    with T2IClient(sleepy_server.target, api_key=API_KEY) as client:
        stream = client.stream_generate("long", steps=600)
        job_id = next(stream).job_id
        next(stream)  # running
        flags = ["--api-key", API_KEY, *target(sleepy_server)]
        running = run_cli("--json", "job", "t2i", job_id, *flags)
        assert running.code == 0, running.stderr
        assert running.json()["state"] == "running"
        assert running.json()["total_steps"] == 600
        cancelled = run_cli("cancel", "t2i", job_id, *flags)
        assert cancelled.code == 0, cancelled.stderr
        assert f"job {job_id} (text_to_image): cancelled" in cancelled.stdout
        with pytest.raises(Cancelled):
            list(stream)
        watched = run_cli("job", "t2i", job_id, "--watch", *flags)
        assert watched.code == 0
        assert "cancelled" in watched.stdout
