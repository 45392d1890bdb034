"""Vision tests: tiny models, one torch thread (the tiny forward passes gain nothing from more,
and CI shares two cores between the test process and the servers it starts)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
