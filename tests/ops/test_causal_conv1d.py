"""causal_conv1d against a hand loop; causal_conv1d_update against the full convolution, token by token."""

import pytest
import torch
import torch.nn.functional as F

from medssm.ops import causal_conv1d, causal_conv1d_update


def conv_loop(x, weight, bias=None, activation=None):
    """out[b, c, t] = bias[c] + sum_k weight[c, k] * x[b, c, t - width + 1 + k], with x = 0 before t = 0."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    for t in range(seqlen):
        for k in range(width):
            src = t - width + 1 + k
            if src >= 0:
                out[:, :, t] += weight[:, k].double() * x[:, :, src].double()
    if bias is not None:
        out += bias.double()[:, None]
    return out if activation is None else F.silu(out)


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("seqlen", [1, 3, 17])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("has_bias", [False, True])
def test_matches_hand_loop(width, seqlen, activation, has_bias):
    torch.manual_seed(0)
    x = torch.randn(2, 5, seqlen)
    weight = torch.randn(5, width)
    bias = torch.randn(5) if has_bias else None
    out = causal_conv1d(x, weight, bias, activation)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), conv_loop(x, weight, bias, activation), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("state_len", ["width", "width-1"])
def test_update_token_by_token_equals_full(width, state_len):
    torch.manual_seed(1)
    batch, dim, seqlen = 2, 6, 9
    x = torch.randn(batch, dim, seqlen)
    weight, bias = torch.randn(dim, width), torch.randn(dim)
    full = causal_conv1d(x, weight, bias, "silu")
    conv_state = torch.zeros(batch, dim, width if state_len == "width" else width - 1)
    steps = [causal_conv1d_update(x[:, :, t], conv_state, weight, bias, "silu") for t in range(seqlen)]
    assert steps[0].shape == (batch, dim)
    torch.testing.assert_close(torch.stack(steps, dim=-1), full)
    # The state holds the most recent inputs, oldest first.
    torch.testing.assert_close(conv_state, x[:, :, seqlen - conv_state.shape[-1]:])


def test_update_several_tokens_at_once():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 7)
    weight = torch.randn(4, 3)
    conv_state = torch.zeros(2, 4, 3)
    first = causal_conv1d_update(x[:, :, :2], conv_state, weight)
    rest = causal_conv1d_update(x[:, :, 2:], conv_state, weight)
    torch.testing.assert_close(torch.cat([first, rest], dim=-1), causal_conv1d(x, weight))


def test_update_is_in_place_and_keeps_dtype():
    x = torch.randn(1, 3, dtype=torch.bfloat16)
    conv_state = torch.zeros(1, 3, 4, dtype=torch.bfloat16)
    ptr = conv_state.data_ptr()
    out = causal_conv1d_update(x, conv_state, torch.randn(3, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3)
    assert conv_state.data_ptr() == ptr
    torch.testing.assert_close(conv_state[:, :, -1], x)
    assert causal_conv1d(torch.randn(1, 3, 5, dtype=torch.float16), torch.randn(3, 2)).dtype == torch.float16


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"x": torch.randn(2, 4)}, r"x must have shape \(batch, dim, L\)"),
    ({"weight": torch.randn(5, 3)}, r"weight must have shape \(dim, width\) = \(4, width\)"),
    ({"weight": torch.randn(4)}, "weight must have shape"),
    ({"bias": torch.randn(3)}, r"bias must have shape \(dim,\) = \(4,\)"),
    ({"activation": "relu"}, "activation must be None, 'silu' or 'swish'"),
])
def test_conv_errors(kwargs, match):
    args = {"x": torch.randn(2, 4, 6), "weight": torch.randn(4, 3), "bias": None, "activation": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        causal_conv1d(**args)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"conv_state": torch.zeros(2, 4, 1)}, r"conv_state must have shape \(batch, dim, state_len\) = \(2, 4,"),
    ({"conv_state": torch.zeros(3, 4, 3)}, "conv_state must have shape"),
    ({"x": torch.randn(2)}, r"x must have shape \(batch, dim\)"),
    ({"weight": torch.randn(4, 3, 1)}, "weight must have shape"),
])
def test_update_errors(kwargs, match):
    args = {"x": torch.randn(2, 4), "conv_state": torch.zeros(2, 4, 3), "weight": torch.randn(4, 3)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        causal_conv1d_update(**args)
