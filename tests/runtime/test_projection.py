"""The decode batch's vocabulary projection: the same logits, computed the fast way round."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from services.runtime.chat.projection import speed_up_output_projection


class _Lm(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.lm_head = head

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def _head(dtype: torch.dtype = torch.float32, bias: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(48, 5000, bias=bias).to(dtype)


@pytest.mark.parametrize("bias", [False, True])
def test_several_rows_give_the_same_logits(bias: bool) -> None:
    head = _head(bias=bias)
    hidden = torch.randn(8, 1, 48)
    expected = nn.functional.linear(hidden, head.weight, head.bias)
    assert speed_up_output_projection(_Lm(head))
    got = head(hidden)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_one_row_is_computed_exactly_as_before() -> None:
    head = _head()
    hidden = torch.randn(1, 3, 48)[:, -1:, :]
    expected = nn.functional.linear(hidden, head.weight)
    speed_up_output_projection(_Lm(head))
    assert torch.equal(head(hidden), expected)


def test_bf16_heads_and_hooked_heads_are_left_alone() -> None:
    bf16 = _head(torch.bfloat16)
    assert not speed_up_output_projection(_Lm(bf16))
    assert "forward" not in vars(bf16)
    hooked = _head()
    hooked._hf_hook = object()  # what accelerate's dispatch leaves on a module it wraps
    assert not speed_up_output_projection(_Lm(hooked))
    assert "forward" not in vars(hooked)
    assert not speed_up_output_projection(nn.Module())  # no output embedding at all


def test_idempotent_and_copies_keep_their_own_weights() -> None:
    model = _Lm(_head())
    assert speed_up_output_projection(model)
    forward = model.lm_head.forward
    assert speed_up_output_projection(model)
    assert model.lm_head.forward is forward
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.lm_head.weight.zero_()
    hidden = torch.randn(4, 1, 48)
    assert torch.count_nonzero(clone.lm_head(hidden)) == 0
    assert torch.count_nonzero(model.lm_head(hidden)) > 0
