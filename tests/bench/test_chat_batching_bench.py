"""The chat batching bench's request mix: pure logic, no servers."""

from __future__ import annotations

import statistics

from bench.chat_batching_bench import MIXED_FRACTIONS, token_limit


def test_fixed_lengths_give_every_request_the_same_limit() -> None:
    assert {token_limit(index, 32, "fixed") for index in range(20)} == {32}


def test_mixed_lengths_keep_the_mean_in_every_block_of_eight() -> None:
    assert len(MIXED_FRACTIONS) == 8
    blocks = [[token_limit(block * 8 + i, 32, "mixed") for i in range(8)] for block in range(6)]
    for limits in blocks:
        # Every block does the same work, in its own order.
        assert sorted(limits) == [8, 15, 22, 29, 35, 42, 49, 56]
        assert abs(statistics.mean(limits) - 32) < 0.5
    assert len({tuple(limits) for limits in blocks}) > 1
    # The same index always gets the same limit, so runs are repeatable.
    assert token_limit(13, 32, "mixed") == token_limit(13, 32, "mixed")


def test_mixed_lengths_never_ask_for_zero_tokens() -> None:
    assert min(token_limit(index, 1, "mixed") for index in range(8)) == 1
