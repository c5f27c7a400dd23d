"""The Mamba-2 mixer: mamba_ssm's parameters, initialisation, recurrent decoding and gradients."""

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import check_state_dict_round_trip, decode, randomise

from medssm.layers import Mamba2

# mamba_ssm's Mamba2(d_model=32, d_state=16, headdim=16, ngroups=2): d_inner 64, nheads 4,
# conv_dim = 64 + 2 * 2 * 16 = 128, in_proj out = [z 64, x 64, B 32, C 32, dt 4] = 196.
MAMBA_SSM_PARAMS = {
    "dt_bias": (4,),
    "A_log": (4,),
    "D": (4,),
    "in_proj.weight": (196, 32),
    "conv1d.weight": (128, 1, 4),
    "conv1d.bias": (128,),
    "norm.weight": (64,),
    "out_proj.weight": (32, 64),
}
CONFIG = {"d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 4}


def make(**kwargs):
    torch.manual_seed(0)
    return Mamba2(32, **{**CONFIG, **kwargs})


def test_parameter_names_and_shapes_match_mamba_ssm():
    model = make()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == MAMBA_SSM_PARAMS
    assert (model.nheads, model.conv_dim) == (4, 128)
    variant = make(D_has_hdim=True, rmsnorm=False, bias=True, conv_bias=False)
    expected = {k: v for k, v in MAMBA_SSM_PARAMS.items() if k not in ("norm.weight", "conv1d.bias")}
    expected.update({"D": (64,), "in_proj.bias": (196,), "out_proj.bias": (32,)})
    assert {k: tuple(v.shape) for k, v in variant.state_dict().items()} == expected
    defaults = Mamba2(64)  # mamba_ssm's defaults: d_state 128, headdim 64, ngroups 1
    assert (defaults.d_state, defaults.headdim, defaults.nheads, defaults.chunk_size) == (128, 64, 2, 256)
    assert tuple(defaults.in_proj.weight.shape) == (2 * 128 + 2 * 128 + 2, 64)
    assert defaults.norm.group_size == 128 and make().norm.group_size == 32


def test_state_dict_loads_strictly_and_round_trips_through_safetensors(tmp_path):
    check_state_dict_round_trip(make, MAMBA_SSM_PARAMS, torch.randn(1, 5, 32), tmp_path)


def test_initialisation():
    model = make(dt_min=0.002, dt_max=0.05, A_init_range=(2, 8))
    dt = F.softplus(model.dt_bias.detach())
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    A = torch.exp(model.A_log.detach())
    assert A.min() >= 2 * (1 - 1e-5) and A.max() <= 8 * (1 + 1e-5) and A.std() > 0
    torch.testing.assert_close(model.D.detach(), torch.ones(4))
    torch.testing.assert_close(model.norm.weight.detach(), torch.ones(64))
    assert model.dt_bias._no_weight_decay and model.A_log._no_weight_decay and model.D._no_weight_decay
    many = Mamba2(512, headdim=8, d_state=4)  # 128 heads: the draws cover their ranges
    dt = F.softplus(many.dt_bias.detach())
    assert dt.min() < 0.003 and dt.max() > 0.05
    A = torch.exp(many.A_log.detach())
    assert A.min() < 2 and A.max() > 14
    with pytest.raises(ValueError, match="headdim=24 must divide d_inner"):
        Mamba2(32, headdim=24)
    with pytest.raises(ValueError, match="ngroups=3 must divide nheads=4"):
        Mamba2(32, headdim=16, ngroups=3)


VARIANTS = {
    "default": {},
    "one_group": {"ngroups": 1},
    "no_rmsnorm": {"rmsnorm": False},
    "norm_before_gate": {"norm_before_gate": True},
    "D_has_hdim": {"D_has_hdim": True},
    "dt_limit": {"dt_limit": (0.01, 0.05)},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("prefill", [0, 2, 6])
def test_step_by_step_decoding_equals_full_forward(variant, prefill):
    model = randomise(make(**VARIANTS[variant]))
    x = torch.randn(2, 11, 32)
    with torch.no_grad():
        full = model(x)
        decoded = decode(model, x, prefill)
    torch.testing.assert_close(decoded, full, rtol=1e-4, atol=1e-5)


def test_dt_limit_changes_the_output():
    model = randomise(make())
    limited = make(dt_limit=(0.01, 0.02))
    limited.load_state_dict(model.state_dict())
    x = torch.randn(1, 9, 32)
    assert not torch.allclose(model(x), limited(x), atol=1e-4)


def test_cache_shapes_and_errors():
    model = make()
    conv_state, ssm_state = model.allocate_inference_cache(3, dtype=torch.float64)
    assert conv_state.shape == (3, 128, 4) and conv_state.dtype == torch.float64
    assert ssm_state.shape == (3, 4, 16, 16) and ssm_state.dtype == torch.float32
    conv_state, ssm_state = model.allocate_inference_cache(3)
    with torch.no_grad():
        assert model.step(torch.randn(3, 1, 32), conv_state, ssm_state).shape == (3, 1, 32)
    assert ssm_state.abs().sum() > 0
    with pytest.raises(ValueError, match="step decodes one token at a time"):
        model.step(torch.randn(3, 2, 32), conv_state, ssm_state)
    with pytest.raises(ValueError, match=r"ssm_state must have shape \(3, 4, 16, 16\)"):
        model.step(torch.randn(3, 1, 32), conv_state, ssm_state[:, :2])
    with pytest.raises(ValueError, match=r"x must have shape \(batch, L, d_model\)"):
        model(torch.randn(5, 32))


@pytest.mark.parametrize("seqlen", [1, 7, 8])  # 8: whole chunks of 4, nothing to pad
@pytest.mark.parametrize("variant", ["default", "no_rmsnorm"])
def test_forward_backward_any_length(seqlen, variant):
    model = make(**VARIANTS[variant])
    x = torch.randn(2, seqlen, 32, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.dt_bias.grad.abs().sum() > 0 and model.D.grad.abs().sum() > 0
    if seqlen > 1:  # A only acts on the state carried from one token to the next
        assert model.A_log.grad.abs().sum() > 0


def test_bfloat16_module():
    model = make(dtype=torch.bfloat16)
    assert model.in_proj.weight.dtype == torch.bfloat16 and model.D.dtype == torch.float32
    out = model(torch.randn(1, 6, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
