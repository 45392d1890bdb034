"""`health`, `info`, `job`, `cancel` and `voices`: the calls every service shares."""

from __future__ import annotations

import time

import grpc

from ..clients import Client, OmniClient, T2IClient, VisionClient, VLClient
from ..errors import MMServeError
from ..results import Job, JobState
from .context import Context

CLIENTS: dict[str, type[Client]] = {
    "t2i": T2IClient,
    "vl": VLClient,
    "vision": VisionClient,
    "omni": OmniClient,
}
FINISHED = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def exit_code(code: grpc.StatusCode) -> int:
    """The CLI's exit status for a gRPC status: 10 + its number (OK stays 0)."""
    number = int(code.value[0])
    return 0 if number == 0 else 10 + number


def health(ctx: Context) -> int:
    """Exit 0 only when every capability asked about is SERVING (else UNAVAILABLE's code)."""
    args = ctx.args
    names = args.capability or list(CLIENTS)
    deadline = time.monotonic() + args.wait
    statuses: dict[str, str] = {}
    for name in names:
        client = ctx.client(CLIENTS[name])
        while True:
            try:
                statuses[name] = client.health(timeout=5.0)
            except MMServeError as error:
                statuses[name] = error.code.name.lower()
            if statuses[name] == "serving" or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    lines = [f"{name}: {status}" for name, status in statuses.items()]
    ctx.emit(statuses, "\n".join(lines))
    ok = all(status == "serving" for status in statuses.values())
    return 0 if ok else exit_code(grpc.StatusCode.UNAVAILABLE)


def info(ctx: Context) -> int:
    client = ctx.client(CLIENTS[ctx.args.capability])
    described = client.info()
    model = described.model
    lines = [
        f"service: {client.service_name} at {client.target}",
        f"model: {model.model_id} ({model.family}, {model.architecture})",
        f"state: {model.state}{' - ' + model.load_error if model.load_error else ''}",
        f"device: {model.device} {model.dtype}"
        + (
            f", attention {model.attention_implementation}"
            if model.attention_implementation
            else ""
        )
        + (", compiled" if model.compiled else ""),
        f"capabilities: {', '.join(model.capabilities) or '-'}",
        f"queue: up to {model.max_queue_size} jobs, batches of up to {model.max_batch_size}",
        f"server: {model.server_version}, loaded in {model.load_seconds:.2f}s",
        *([f"notice: {model.notice}"] if model.notice else []),
        *(f"limit {k}: {v}" for k, v in described.limits.items()),
        *(f"{k}: {v}" for k, v in described.extras.items()),
    ]
    ctx.emit(described, "\n".join(lines))
    return 0


def describe_job(job: Job) -> str:
    parts = [f"job {job.job_id} ({job.kind}): {job.state.value}"]
    if job.state is JobState.QUEUED:
        parts.append(
            f"position {job.position} of {job.queue_length}, "
            f"starts in ~{job.queue_eta_seconds:.1f}s"
        )
    if job.total_steps or job.step:
        parts.append(f"step {job.step}/{job.total_steps or '?'}")
    if job.error_code:
        parts.append(f"{job.error_code}: {job.error_message}")
    return ", ".join(parts)


def job(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(CLIENTS[args.capability])
    found = client.get_job(args.job_id, replica=args.replica)
    while args.watch and found.state not in FINISHED:
        ctx.note(describe_job(found))
        time.sleep(args.interval)
        found = client.get_job(args.job_id)
    ctx.emit(found, describe_job(found))
    return 0


def cancel(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client(CLIENTS[args.capability])
    found = client.cancel_job(args.job_id, replica=args.replica)
    ctx.emit(found, describe_job(found))
    return 0


def voices(ctx: Context) -> int:
    client = ctx.client(OmniClient)
    found = client.list_voices()
    lines = [
        f"{v.voice_id}: {v.name}"
        + (f" (registered, {v.sample_seconds:.1f}s)" if v.registered else "")
        for v in found
    ]
    ctx.emit(found, "\n".join(lines) or "no voices")
    return 0
