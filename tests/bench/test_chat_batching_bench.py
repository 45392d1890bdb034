"""The chat batching bench's request mix: pure logic, no servers."""

from __future__ import annotations

import statistics

from bench.chat_batching_bench import MIXED_LENGTHS, token_limit


def test_fixed_lengths_give_every_request_the_same_limit() -> None:
    assert {token_limit(index, 32, "fixed") for index in range(20)} == {32}


def test_mixed_lengths_keep_the_mean_and_vary_between_neighbours() -> None:
    limits = [token_limit(index, 32, "mixed") for index in range(len(MIXED_LENGTHS))]
    assert statistics.mean(limits) == 32
    # Eight clients starting together get different limits, so they drift apart.
    assert len(set(limits)) >= 6
    assert min(limits) >= 1
    # The cycle repeats, so every run of 8 requests does the same work.
    assert [token_limit(index + 8, 32, "mixed") for index in range(8)] == limits


def test_mixed_lengths_never_ask_for_zero_tokens() -> None:
    assert min(token_limit(index, 1, "mixed") for index in range(8)) == 1
