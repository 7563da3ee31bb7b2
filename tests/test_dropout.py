"""FastDropout: the mask a cheaper RNG draw gives is still dropout (rate, scale, independence, seed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ur4rec.models.dropout import FastDropout, dropout_mask, fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_keep_rate_and_scale_match_p(p: float) -> None:
    torch.manual_seed(0)
    n = 400_000
    mask = dropout_mask((n,), p, torch.float32)
    kept = (mask > 0).double()
    rate = 1 - kept.mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5  # 5 binomial standard errors
    scale = mask.max().item()
    p_used = round(p * 65536) / 65536  # the rounded probability the scale is built from
    assert scale == pytest.approx(1 / (1 - p_used), rel=1e-6)
    assert mask.unique().tolist() == [0.0, scale]


def test_every_lane_of_a_64_bit_draw_is_uniform_and_neighbours_are_independent() -> None:
    """Four masks come from one 64-bit draw: each lane must keep at the same rate (a biased lane,
    e.g. a sign bit that is always 0, would show here) and adjacent elements must not correlate."""
    torch.manual_seed(1)
    n = 800_000
    kept = (dropout_mask((n,), 0.5, torch.float32) > 0).double()
    se = 5 * (0.25 / (n / 4)) ** 0.5
    for lane in range(4):
        assert abs(kept[lane::4].mean().item() - 0.5) < se, lane
    corr = torch.corrcoef(torch.stack([kept[:-1], kept[1:]]))[0, 1].item()
    assert abs(corr) < 5 / n**0.5


def test_same_seed_same_mask_and_eval_is_identity() -> None:
    x = torch.randn(64, 50, 32)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.2, True)
    torch.manual_seed(3)
    b = fast_dropout(x, 0.2, True)
    assert torch.equal(a, b)
    layer = FastDropout(0.2).eval()
    assert layer(x) is x
    assert fast_dropout(x, 0.0, True) is x


def test_gradient_is_the_mask() -> None:
    x = torch.randn(1000, requires_grad=True)
    torch.manual_seed(4)
    y = fast_dropout(x, 0.3, True)
    y.sum().backward()
    assert torch.allclose(x.grad * x.detach(), y.detach())  # dy/dx is the keep-and-scale multiplier
    assert set(x.grad.unique().tolist()) <= {0.0, x.grad.max().item()}


def test_expectation_is_the_input_like_nn_dropout() -> None:
    torch.manual_seed(5)
    x = torch.full((200_000,), 2.0)
    ours, theirs = fast_dropout(x, 0.2, True).mean().item(), nn.functional.dropout(x, 0.2).mean().item()
    assert ours == pytest.approx(2.0, abs=0.01) and theirs == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_probability_is_refused(p: float) -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_folded_padding_mask_gives_the_same_draws_and_values_as_masking_after(dtype: torch.dtype) -> None:
    shape = (8, 50, 16)
    valid = torch.rand(8, 50, 1) > 0.3
    torch.manual_seed(5)
    folded = dropout_mask(shape, 0.2, dtype, valid=valid)
    after_folded = torch.rand(3)  # the generator moved on by the same draws
    torch.manual_seed(5)
    plain = dropout_mask(shape, 0.2, dtype)
    assert torch.equal(folded, plain * valid.to(dtype))
    assert torch.equal(after_folded, torch.rand(3))
