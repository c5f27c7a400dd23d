"""ECG Mamba: shapes at odd lengths, the no-SSM control, every 1D scan route, causality, and streaming: equal to
the causal forward's per-window logits for any chunking, with state whose size does not grow with the signal."""

from __future__ import annotations

import pytest
import torch
from _classifier_checks import check_no_ssm, check_odd_shape, check_route, route_cases

from medssm.models import create_model
from medssm.models.ecg_mamba import ECGMamba

TINY = {"stem_channels": (8, 16), "stem_strides": (2, 2), "depth": 2, "d_state": 4}


@pytest.mark.parametrize("causal", [False, True])
def test_shape_at_odd_lengths(causal):
    check_odd_shape("ecg_mamba", 1, causal=causal, **TINY)
    model = ECGMamba(1, 1, 2, **TINY)
    assert model(torch.randn(3, 1, 1)).shape == (3, 2)  # a single sample still makes one token


@pytest.mark.parametrize("causal", [False, True])
def test_no_ssm_removes_only_the_scan_and_trains(causal):
    check_no_ssm("ecg_mamba", 1, causal=causal, **TINY)


@pytest.mark.parametrize("route,dims", route_cases((1,)))
def test_every_route_runs(route, dims):
    check_route("ecg_mamba", route, dims, **TINY)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="route must be 'raster'"):
        ECGMamba(causal=True, route="bidirectional")
    with pytest.raises(ValueError, match="supports spatial_dims \\(1,\\), got 2"):
        create_model("ecg_mamba", spatial_dims=2)
    with pytest.raises(ValueError, match="spatial_dims must be 1"):
        ECGMamba(spatial_dims=2)
    with pytest.raises(ValueError, match="needs the causal configuration"):
        ECGMamba(**TINY).eval().window_logits(torch.randn(1, 1, 64), 16)
    with pytest.raises(ValueError, match="multiple of the stem's stride 4"):
        ECGMamba(causal=True, **TINY).window_logits(torch.randn(1, 1, 64), 6)
    with pytest.raises(RuntimeError, match="eval mode"):
        next(ECGMamba(causal=True, **TINY).train().stream([torch.randn(1, 1, 8)], 8))


def test_causal_model_never_looks_ahead():
    torch.manual_seed(0)
    model = ECGMamba(1, 1, 3, causal=True, **TINY).eval()
    x = torch.randn(1, 1, 64)
    changed = x.clone()
    changed[..., 40:] = torch.randn(24)  # samples 40.. change: tokens up to 39 // 4 = 9 must not
    with torch.no_grad():
        a, b = model.tokens(x), model.tokens(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    # the bidirectional model does look ahead
    bidirectional = ECGMamba(1, 1, 3, **TINY).eval()
    with torch.no_grad():
        assert not torch.allclose(bidirectional.tokens(x)[:, :10], bidirectional.tokens(changed)[:, :10])


@pytest.mark.parametrize("chunk_sizes", [[1], [7], [50, 3, 1, 64, 2, 13]])
def test_streaming_equals_the_causal_forward(chunk_sizes):
    torch.manual_seed(0)
    model = ECGMamba(1, 2, 3, causal=True, **TINY).eval()
    x = torch.randn(2, 2, 203)
    with torch.no_grad():
        expected = model.window_logits(x, window=16)  # 51 tokens -> 12 windows of 4 tokens
    sizes, total = [], 0
    while total < x.shape[-1]:  # cycle through chunk_sizes until the signal is used up
        size = min(chunk_sizes[len(sizes) % len(chunk_sizes)], x.shape[-1] - total)
        sizes.append(size)
        total += size
    outputs = list(model.stream(torch.split(x, sizes, dim=-1), window=16))
    streamed = torch.cat(outputs, dim=1)
    assert expected.shape == (2, 12, 3)
    torch.testing.assert_close(streamed, expected, rtol=1e-5, atol=1e-5)


def test_stream_state_size_does_not_depend_on_the_signal_length():
    model = ECGMamba(1, 1, 2, causal=True, **TINY).eval()
    sizes = []
    for length in (40, 400):
        state = model.init_stream(window=8)
        for chunk in torch.split(torch.randn(1, 1, length), 9, dim=-1):
            model.stream_step(state, chunk)
            sizes.append(sum(t.numel() for t in state.tensors()))
    assert max(sizes) <= sizes[0] + 2 * 7  # only the stem buffers vary, by less than k + stride samples each
    assert state.windows_done == 400 // 8
