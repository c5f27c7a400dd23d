"""DropPath: per-sample stochastic depth, identity in eval and at p=0, expectation preserved."""

from __future__ import annotations

import pytest
import torch

from medssm.layers import DropPath


def test_drop_path_is_identity_in_eval_and_rescales_kept_samples_in_training():
    torch.manual_seed(0)
    dp = DropPath(0.25)
    x = torch.rand(4000, 3, 2) + 0.5
    assert dp.eval()(x) is x
    out = dp.train()(x)
    kept = out.flatten(1).ne(0).all(1)
    assert torch.equal(kept, out.flatten(1).ne(0).any(1))  # whole samples are kept or dropped
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert DropPath(0.0).train()(x) is x
    with pytest.raises(ValueError):
        DropPath(1.0)



def test_drop_path_preserves_the_expectation():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3).expand(20000, 4, 3)
    for p in (0.1, 0.5):
        mean = DropPath(p).train()(x).mean(0)
        torch.testing.assert_close(mean, x[0], atol=0.05 * x.abs().max().item(), rtol=0)


def test_drop_path_keeps_gradients_of_kept_samples():
    torch.manual_seed(0)
    x = torch.randn(64, 5, requires_grad=True)
    DropPath(0.5).train()(x).sum().backward()
    scale = x.grad[:, 0]
    assert torch.all((scale == 0) | (scale == 2.0)) and torch.all(x.grad == scale[:, None])
