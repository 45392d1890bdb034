"""Process-wide CPU threading choices, applied at start before torch loads.

torch's CPU kernels run on an OpenMP team. By default (OpenMP's "active" wait) a team thread
that finishes its share of an operator spins on its core until the next parallel region, so
on a machine with few cores the threads that decode images, tokenize and answer gRPC calls
wait for a time slice while cores are busy doing nothing useful. "passive" makes idle team
threads sleep instead. OpenMP reads the policy once, when the library loads, so it can only be
chosen before the first `import torch` of the process.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

OpenMPWaitPolicy = Literal["inherit", "active", "passive"]
OPENMP_WAIT_ENV = "OMP_WAIT_POLICY"


def apply_gil_switch_interval(milliseconds: float) -> dict[str, float]:
    """Sets how long a thread may hold the GIL while another waits for it. The device thread
    runs Python between kernels (a generate loop, a scheduler step); with Python's 5 ms default
    the event loop thread that should send a finished token or accept the next call can wait
    that long for its turn."""
    sys.setswitchinterval(milliseconds / 1000)
    return {"gil_switch_interval_ms": sys.getswitchinterval() * 1000}


def apply_openmp_wait_policy(policy: OpenMPWaitPolicy) -> dict[str, str]:
    """Sets OMP_WAIT_POLICY for this process unless the operator's environment already does or
    torch is already loaded. Returns what is in effect, for the start-up log line."""
    current = os.environ.get(OPENMP_WAIT_ENV)
    if policy == "inherit":
        return {"openmp_wait_policy": current or "openmp default", "source": "environment"}
    if current is not None:
        # An explicit OMP_WAIT_POLICY is the operator's standard knob: it wins.
        return {"openmp_wait_policy": current, "source": "environment", "setting": policy}
    if "torch" in sys.modules:
        return {"openmp_wait_policy": "openmp default", "source": "torch loaded first"}
    os.environ[OPENMP_WAIT_ENV] = policy.upper()
    return {"openmp_wait_policy": policy.upper(), "source": "setting"}
