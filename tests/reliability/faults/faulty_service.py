"""A test capability for fault and memory checks: the real runtime serving the t2i contract (the
sleepy test service's servicer) with an engine that fails on cue and makes outputs of any size.

Prompts steer it (by their first word):
- "fail-at-N": raises a plain error at step N, after N-1 steps ran and were reported (a model
  bug mid-job);
- "oom-at-N": runs out of memory at step N;
- "oom-holding": runs out of memory while its frame holds `hold_mib` MiB (like a forward pass
  that dies holding its activations);
- "ignore-cancel": never checks its cancel token;
- anything else succeeds after its steps.

Each step streams an `output_kib` output (a preview, a speech chunk) and a job returns a
`result_kib` result (incompressible bytes), the way real images and audio are large: a server
that kept finished jobs' outputs would grow by megabytes per call.

`python -m tests.reliability.faults.faulty_service --result-kib 512 --output-kib 128 ...`
"""

from __future__ import annotations

import io
import os
import sys
import time

from PIL import Image
from pydantic import Field

from services.runtime.executor import JobContext
from services.runtime.server import Capability, main
from tests.support.sleepy_service import SleepyEngine, SleepySettings, operations


class FaultySettings(SleepySettings):
    """Settings of the faulty test service."""

    section = "faulty"
    result_kib: int = Field(0, ge=0, description="Size of each job's result; 0: a tiny PNG.")
    output_kib: int = Field(0, ge=0, description="Size of the output each step streams.")
    hold_mib: int = Field(256, ge=1, description="Memory an 'oom-holding' job holds as it fails.")


def _cue(prompt: str, name: str) -> int | None:
    """N of a "name-at-N" cue in the prompt's first word (the rest of the prompt is free)."""
    head, _, step = prompt.split(" ", 1)[0].partition("-at-")
    return int(step) if head == name and step.isdigit() else None


class FaultyEngine(SleepyEngine):
    settings: FaultySettings

    def generate(self, ctx: JobContext, prompt: str, steps: int, size: int) -> bytes:
        if prompt == "oom-holding":
            activation = bytearray(os.urandom(1024 * 1024)) * self.settings.hold_mib
            raise MemoryError(f"out of memory holding {len(activation)} bytes (simulated)")
        fail_at, oom_at = _cue(prompt, "fail"), _cue(prompt, "oom")
        for step in range(1, steps + 1):
            if prompt != "ignore-cancel":
                ctx.check()
            if step == fail_at:
                raise RuntimeError(f"model exploded at step {step} (simulated)")
            if step == oom_at:
                raise MemoryError(f"out of memory at step {step} (simulated)")
            time.sleep(self.settings.step_seconds)
            if self.settings.output_kib:
                ctx.emit(os.urandom(self.settings.output_kib * 1024))
            ctx.progress(step, steps)
        if self.settings.result_kib:
            return os.urandom(self.settings.result_kib * 1024)
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), (200, 0, 0)).save(buffer, "PNG")
        return buffer.getvalue()


CAPABILITY = Capability(
    name="faulty",
    service_names=("mmserve.t2i.v1.ImageGenerationService",),
    settings_cls=FaultySettings,
    create_engine=lambda settings: FaultyEngine(settings),  # type: ignore[arg-type]
    operations=operations,
)

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
