"""The Mamba (v1) mixer: mamba_ssm's parameters, initialisation, recurrent decoding and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import check_autocast_keeps_scan_fp32, check_state_dict_round_trip, decode, randomise

from medssm.layers import Mamba

# mamba_ssm's Mamba(d_model=40) parameters (d_inner 80, d_state 16, d_conv 4, dt_rank ceil(40/16) = 3).
MAMBA_SSM_PARAMS = {
    "A_log": (80, 16),
    "D": (80,),
    "in_proj.weight": (160, 40),
    "conv1d.weight": (80, 1, 4),
    "conv1d.bias": (80,),
    "x_proj.weight": (35, 80),
    "dt_proj.weight": (80, 3),
    "dt_proj.bias": (80,),
    "out_proj.weight": (40, 80),
}
BIAS_PARAMS = {"in_proj.bias": (160,), "out_proj.bias": (40,)}


def make(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("scan_backend", "reference")
    return Mamba(40, **kwargs)


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_names_and_shapes_match_mamba_ssm(bias):
    model = make(bias=bias)
    expected = {**MAMBA_SSM_PARAMS, **(BIAS_PARAMS if bias else {})}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.dt_rank == 3 and model.d_inner == 80
    assert Mamba(40).scan_backend == "auto"


def test_state_dict_loads_strictly_and_round_trips_through_safetensors(tmp_path):
    check_state_dict_round_trip(make, MAMBA_SSM_PARAMS, torch.randn(1, 5, 40), tmp_path)


def test_initialisation():
    model = make(dt_min=0.002, dt_max=0.05)
    dt = F.softplus(model.dt_proj.bias.detach())
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert dt.max() / dt.min() > 3  # spread over the range, not a constant
    expected_A_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(80, 16)
    torch.testing.assert_close(model.A_log.detach(), expected_A_log, rtol=0, atol=0)
    assert model.A_log.dtype == torch.float32 and model.D.dtype == torch.float32
    torch.testing.assert_close(model.D.detach(), torch.ones(80))
    bound = 3 ** -0.5
    assert model.dt_proj.weight.abs().max() <= bound
    assert model.A_log._no_weight_decay and model.D._no_weight_decay
    floored = F.softplus(make(dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4).dt_proj.bias.detach())
    torch.testing.assert_close(floored, torch.full((80,), 1e-4))
    constant = make(dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(constant.dt_proj.weight.detach(), torch.full((80, 3), 2 * bound))
    with pytest.raises(ValueError, match="dt_init must be 'random' or 'constant'"):
        make(dt_init="lecun")


@pytest.mark.parametrize("prefill", [0, 2, 6])
def test_step_by_step_decoding_equals_full_forward(prefill):
    model = randomise(make(bias=True))
    x = torch.randn(2, 11, 40)
    with torch.no_grad():
        full = model(x)
        decoded = decode(model, x, prefill)
    torch.testing.assert_close(decoded, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ssm", [True, False])
@pytest.mark.parametrize("cuts", [(0, 1, 8, 8, 23), (0, 23), (0, 5, 6, 17, 23)])
def test_extend_over_chunks_equals_one_step_per_token(ssm, cuts):
    # chunks of uneven sizes (1, empty, prime, longer than max_chunk) continue from a non-zero state
    model = randomise(make(bias=True, ssm=ssm))
    x = torch.randn(2, 23, 40)
    by_step, by_chunk = model.allocate_inference_cache(2), model.allocate_inference_cache(2)
    with torch.no_grad():
        stepped = torch.cat([model.step(x[:, i:i + 1], *by_step) for i in range(23)], dim=1)
        chunked = torch.cat([model.extend(x[:, a:b], *by_chunk, max_chunk=5)
                             for a, b in zip(cuts[:-1], cuts[1:], strict=True)], dim=1)
        full = model(x)
    torch.testing.assert_close(chunked, stepped, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)
    for a, b in zip(by_chunk, by_step, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if ssm:
        assert by_chunk[1].abs().sum() > 0  # the state was carried, not left at zero
    with pytest.raises(ValueError, match="max_chunk must be positive"):
        model.extend(x, *by_chunk, max_chunk=0)
    with pytest.raises(ValueError, match="conv_state must have shape"):
        model.extend(x[:1], *by_chunk)


def test_cache_shapes_and_in_place_updates():
    model = make()
    conv_state, ssm_state = model.allocate_inference_cache(3, dtype=torch.float64)
    assert conv_state.shape == (3, 80, 4) and conv_state.dtype == torch.float64
    assert ssm_state.shape == (3, 80, 16) and ssm_state.dtype == torch.float32
    conv_state, ssm_state = model.allocate_inference_cache(3)
    assert conv_state.dtype == torch.float32
    with torch.no_grad():
        out = model.step(torch.randn(3, 1, 40), conv_state, ssm_state)
    assert out.shape == (3, 1, 40)
    assert conv_state.abs().sum() > 0 and ssm_state.abs().sum() > 0
    with pytest.raises(ValueError, match="step decodes one token at a time"):
        model.step(torch.randn(3, 2, 40), conv_state, ssm_state)
    with pytest.raises(ValueError, match="conv_state must have shape"):
        model.step(torch.randn(2, 1, 40), conv_state, ssm_state)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, L, d_model\)"):
        model(torch.randn(2, 5, 39))


@pytest.mark.parametrize("seqlen", [1, 7])
def test_forward_backward_any_length(seqlen):
    model = make()
    x = torch.randn(2, seqlen, 40, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.dt_proj.bias.grad.abs().sum() > 0
    if seqlen > 1:  # A only acts on the state carried from one token to the next
        assert model.A_log.grad.abs().sum() > 0


def test_bfloat16_module():
    model = make(dtype=torch.bfloat16)
    assert model.in_proj.weight.dtype == torch.bfloat16 and model.A_log.dtype == torch.float32
    out = model(torch.randn(1, 6, 40, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert math.isfinite(out.float().sum().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_the_scan_in_fp32(dtype, monkeypatch):
    import medssm.layers.mamba as mamba_module

    torch.manual_seed(0)
    check_autocast_keeps_scan_fp32(mamba_module, make(), torch.randn(2, 6, 40), dtype, monkeypatch)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_every_scan_backend_gives_the_reference_output_and_gradients(backend):
    torch.manual_seed(0)
    layers = {name: Mamba(24, d_state=8, scan_backend=name) for name in ("reference", backend)}
    layers[backend].load_state_dict(layers["reference"].state_dict())
    x = torch.randn(2, 37, 24)
    outs, grads = {}, {}
    for name, layer in layers.items():
        xi = x.clone().requires_grad_()
        outs[name] = layer(xi)
        outs[name].square().mean().backward()
        grads[name] = [xi.grad] + [p.grad for p in layer.parameters()]
    torch.testing.assert_close(outs[backend], outs["reference"], rtol=6e-4, atol=2e-3)
    for got, want in zip(grads[backend], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
