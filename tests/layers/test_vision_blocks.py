"""The vision Mamba blocks: any size in 1D/2D/3D, gradients, scan-backend parity, Vim's state-dict keys,
LBMamba's direction alternation, MHS-VM's per-head routes and fusion, ToM's 3D-only input, drop path in blocks."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import check_state_dict_round_trip, randomise

from medssm.layers import (
    GSC,
    BiMamba,
    LBMambaBlock,
    Mamba,
    MultiHeadScanBlock,
    ResidualVisionMamba,
    ToMBlock,
    VimBlock,
    VSSBlock,
)
from medssm.scans import get_route

SHAPES = {1: (11,), 2: (5, 7), 3: (3, 5, 2)}
C = 8


def mhs_routes(spatial_dims):
    return ["cross", "dilated"] if spatial_dims == 1 else ["cross", "snake", "local", "dilated"]


# name -> (spatial dims it is tested in, factory(spatial_dims, scan_backend)).
BLOCKS = {
    "vss": ((1, 2, 3), lambda sd, be: VSSBlock(sd, C, d_state=4, mlp_ratio=2.0, scan_backend=be)),
    "vss_snake_weighted": ((2,), lambda sd, be: VSSBlock(sd, C, d_state=4, route="snake", merge="weighted",
                                                        scan_backend=be)),
    "vim": ((1, 2, 3), lambda sd, be: VimBlock(sd, C, d_state=4, scan_backend=be)),
    "rvm": ((1, 2, 3), lambda sd, be: ResidualVisionMamba(sd, C, d_state=4, scan_backend=be)),
    "tom": ((3,), lambda sd, be: ToMBlock(sd, C, d_state=4, scan_backend=be)),
    "tom_gsc": ((3,), lambda sd, be: ToMBlock(sd, C, d_state=4, gsc=True, scan_backend=be)),
    "mhs": ((1, 2, 3), lambda sd, be: MultiHeadScanBlock(sd, C, routes=mhs_routes(sd), d_state=4,
                                                         route_kwargs=None, scan_backend=be)),
    "lbmamba": ((1, 2, 3), lambda sd, be: LBMambaBlock(sd, C, window=3, layer_index=2, d_state=4,
                                                       mlp_ratio=1.0, scan_backend=be)),
}
CASES = [(name, sd) for name, (dims, _) in BLOCKS.items() for sd in dims]


def build(name, spatial_dims, backend="auto", seed=0):
    torch.manual_seed(seed)
    return randomise(BLOCKS[name][1](spatial_dims, backend))


def forward_backward(block, x):
    """Output and input gradient of a scalar loss, with fresh parameter gradients."""
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = block(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out, x.grad


@pytest.mark.parametrize("name,spatial_dims", CASES)
def test_forward_backward_on_odd_and_prime_sizes(name, spatial_dims):
    block = build(name, spatial_dims)
    x = torch.randn(2, C, *SHAPES[spatial_dims])
    out, grad = forward_backward(block, x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    for pname, p in block.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert float(grad.abs().sum()) > 0
    # A one-token grid works too.
    assert block(torch.randn(1, C, *[1] * spatial_dims)).shape == (1, C, *[1] * spatial_dims)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("name,spatial_dims", [("vss", 2), ("vim", 2), ("vim", 3), ("rvm", 3), ("tom", 3),
                                               ("mhs", 2), ("lbmamba", 2)])
def test_same_output_through_every_scan_backend(name, spatial_dims, backend):
    ref = build(name, spatial_dims, "reference")
    fast = build(name, spatial_dims, backend, seed=1)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, C, *SHAPES[spatial_dims])
    out_ref, grad_ref = forward_backward(ref, x)
    out, grad = forward_backward(fast, x)
    torch.testing.assert_close(out, out_ref, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(grad, grad_ref, rtol=1.2e-3, atol=4e-3)


def test_blocks_reject_wrong_inputs():
    with pytest.raises(ValueError, match="spatial"):
        VSSBlock(2, C, d_state=4)(torch.randn(1, C, 5))
    with pytest.raises(ValueError, match="8"):
        VimBlock(2, C, d_state=4)(torch.randn(1, C + 1, 5, 7))
    with pytest.raises(ValueError, match="spatial_dims"):
        ResidualVisionMamba(4, C)


# --- VMamba ------------------------------------------------------------------------------------------------


def test_vss_block_structure_and_names():
    block = VSSBlock(2, 16, d_state=8)
    names = {k for k, _ in block.named_parameters()}
    assert {"norm.weight", "op.x_proj_weight", "op.A_logs", "op.Ds", "norm2.weight", "mlp.fc1.weight",
            "mlp.fc2.weight"} <= names
    assert block.op.route.name == "cross" and block.op.num_routes == 4
    assert block.mlp.fc1.out_features == 64  # mlp_ratio 4
    plain = VSSBlock(2, 16, d_state=8, mlp_ratio=0, route="snake")
    assert plain.mlp is None and plain.norm2 is None and plain.op.route.name == "snake"
    assert not any(k.startswith(("mlp", "norm2")) for k in plain.state_dict())


def test_vss_block_is_residual_over_its_mixer():
    torch.manual_seed(0)
    block = VSSBlock(2, C, d_state=4, mlp_ratio=0).eval()
    x = torch.randn(2, C, 5, 7)
    expected = x + block.op(block.norm(x.movedim(1, -1)).movedim(-1, 1))
    torch.testing.assert_close(block(x), expected)


# --- Vim ---------------------------------------------------------------------------------------------------

# Vim's mixer (Mamba, bimamba_type="v2") for d_model=16, d_state=8: d_inner 32, dt_rank 1, d_conv 4;
# plus the block's RMSNorm weight.
VIM_PARAMS = {
    "norm.weight": (16,),
    "mixer.in_proj.weight": (64, 16),
    "mixer.conv1d.weight": (32, 1, 4),
    "mixer.conv1d.bias": (32,),
    "mixer.x_proj.weight": (17, 32),
    "mixer.dt_proj.weight": (32, 1),
    "mixer.dt_proj.bias": (32,),
    "mixer.A_log": (32, 8),
    "mixer.D": (32,),
    "mixer.conv1d_b.weight": (32, 1, 4),
    "mixer.conv1d_b.bias": (32,),
    "mixer.x_proj_b.weight": (17, 32),
    "mixer.dt_proj_b.weight": (32, 1),
    "mixer.dt_proj_b.bias": (32,),
    "mixer.A_b_log": (32, 8),
    "mixer.D_b": (32,),
    "mixer.out_proj.weight": (16, 32),
}


def test_vim_parameter_names_shapes_and_strict_load(tmp_path):
    block = VimBlock(2, 16, d_state=8)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == VIM_PARAMS
    assert block.mixer.A_b_log._no_weight_decay and block.mixer.D_b._no_weight_decay
    assert block.mixer.dt_proj_b.bias._no_reinit

    def make():
        torch.manual_seed(0)
        return VimBlock(2, 16, d_state=8, scan_backend="cpu")

    check_state_dict_round_trip(make, VIM_PARAMS, torch.randn(1, 16, 3, 5), tmp_path)


@pytest.mark.parametrize("divide_out", [True, False])
def test_bimamba_is_a_forward_mamba_plus_a_mamba_on_the_reversed_sequence(divide_out):
    torch.manual_seed(0)
    bi = randomise(BiMamba(C, d_state=4, divide_out=divide_out, scan_backend="reference"))
    sd = bi.state_dict()
    fwd, bwd = Mamba(C, d_state=4, scan_backend="reference"), Mamba(C, d_state=4, scan_backend="reference")
    fwd.load_state_dict({k: v for k, v in sd.items() if k in fwd.state_dict()})
    shared = {k: sd[k] for k in ("in_proj.weight", "out_proj.weight")}
    rename = {"A_log": "A_b_log", "D": "D_b"}  # and conv1d.* -> conv1d_b.*, x_proj.* -> x_proj_b.*, ...
    backward = {k: sd[rename.get(k, k.replace(".", "_b.", 1))] for k in bwd.state_dict() if k not in shared}
    bwd.load_state_dict({**shared, **backward})
    x = torch.randn(2, 13, C)
    expected = fwd(x) + bwd(x.flip(1)).flip(1)  # out_proj has no bias, so it distributes over the sum
    torch.testing.assert_close(bi(x), expected / 2 if divide_out else expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError):
        bi.step(x[:, :1], None, None)


def test_vim_block_flattens_the_grid_in_raster_order():
    block2d = build("vim", 2)
    block1d = VimBlock(1, C, d_state=4)
    block1d.load_state_dict(block2d.state_dict())
    x = torch.randn(2, C, 5, 7)
    torch.testing.assert_close(block2d(x), block1d(x.flatten(2)).unflatten(-1, (5, 7)))
    # The backward branch matters: the first token's output depends on the last token.
    x2 = x.clone()
    x2[..., -1, -1] += 1
    assert not torch.allclose(block2d(x)[..., 0, 0], block2d(x2)[..., 0, 0])


# --- LightM-UNet -------------------------------------------------------------------------------------------


def test_rvm_layer_formula_and_out_dim():
    torch.manual_seed(0)
    layer = ResidualVisionMamba(3, C, out_dim=5, d_state=4)
    assert {k for k, _ in layer.named_parameters()} >= {"norm.weight", "mamba.A_log", "proj.weight", "skip_scale"}
    x = torch.randn(2, C, 3, 5, 2)
    assert layer(x).shape == (2, 5, 3, 5, 2)
    with torch.no_grad():
        layer.mamba.out_proj.weight.zero_()  # the Mamba branch is now zero: out = proj(norm(s * tokens))
        layer.skip_scale.fill_(0.5)
    tokens = x.flatten(2).transpose(1, 2)
    expected = layer.proj(layer.norm(0.5 * tokens)).transpose(1, 2).unflatten(-1, (3, 5, 2))
    torch.testing.assert_close(layer(x), expected)


# --- SegMamba ----------------------------------------------------------------------------------------------


def test_tom_block_is_3d_only_with_the_tri_oriented_route():
    block = ToMBlock(3, C, d_state=4)
    assert block.op.route.name == "tri_oriented" and block.op.num_routes == 3 and block.op.merge_mode == "sum"
    assert block.gsc is None and block.mlp is None
    with pytest.raises(ValueError, match="3D"):
        block(torch.randn(1, C, 5, 7))
    with pytest.raises(ValueError, match="3D"):
        block(torch.randn(1, C, 11))
    with pytest.raises(ValueError, match="3D"):
        ToMBlock(2, C)


def test_gsc_gates_multiply_or_add():
    torch.manual_seed(0)
    mul = GSC(3, C)
    add = GSC(3, C, gate="add")
    add.load_state_dict(mul.state_dict())
    assert set(mul.state_dict()) == {f"{p}.{w}" for p in ("proj", "proj2", "proj3", "proj4")
                                     for w in ("weight", "bias")}
    x = torch.randn(2, C, 3, 5, 2)
    assert mul(x).shape == x.shape
    assert not torch.allclose(mul(x), add(x))
    with pytest.raises(ValueError, match="gate"):
        GSC(3, C, gate="max")


# --- MHS-VM ------------------------------------------------------------------------------------------------


def test_multi_head_scan_uses_one_route_per_head_and_weights_that_sum_to_one():
    routes = ["cross", "snake", "local", "dilated"]
    block = MultiHeadScanBlock(2, 16, routes=routes, route_kwargs=[None, None, {"window": 2}, {"rate": 2}],
                               d_state=4)
    op = block.op
    assert op.num_heads == 4 and op.head_dim == 4
    assert [h.route.name for h in op.heads] == routes
    assert all(h.d_model == 4 for h in op.heads)
    assert op.heads[2].route.window == 2
    orders = [h.route.orders((5, 7)) for h in op.heads]
    for i in range(4):
        for j in range(i + 1, 4):
            assert orders[i].shape != orders[j].shape or not torch.equal(orders[i], orders[j])
    randomise(block)
    x = torch.randn(3, 16, 5, 7)
    ys = op.head_outputs(block.norm(x.movedim(1, -1)).movedim(-1, 1))
    assert [tuple(y.shape) for y in ys] == [(3, 4, 5, 7)] * 4
    w = op.route_weights(ys)
    assert w.shape == (3, 4) and (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert not torch.allclose(w, torch.full_like(w, 0.25))  # depends on the input once route_attn is trained
    # The weights act: favouring one head changes the output.
    out = block(x)
    with torch.no_grad():
        op.route_attn.bias[0] += 5.0
    assert not torch.allclose(block(x), out)


def test_cv_gate_merge_by_hand():
    from medssm.layers.vision_mamba import cv_gate_merge

    # Two routes, three positions: equal outputs (cv 0: suppressed), one route zero, opposite signs.
    grids = torch.tensor([[[1.0, 2.0, -1.0]], [[1.0, 0.0, 1.0]]]).unsqueeze(0)  # (1, K=2, C=1, 3)
    spread = torch.tensor([0.0, 2.0**0.5, 2.0**0.5])  # unbiased std over the two routes
    shifted_mean = torch.tensor([0.0, 1.0, 1.0])  # mean of y_k - min_k y_k
    expected = torch.tensor([2.0, 2.0, 0.0]) * torch.relu(spread / (shifted_mean + 1e-5))
    torch.testing.assert_close(cv_gate_merge(grids)[0, 0], expected)
    torch.testing.assert_close(cv_gate_merge(grids, threshold=1.0)[0, 0],
                               torch.tensor([2.0, 2.0, 0.0]) * torch.relu(spread / (shifted_mean + 1e-5) - 1.0))


def test_multi_head_scan_with_mhs_vm_gated_fusion(monkeypatch):
    block = MultiHeadScanBlock(2, 12, routes=["cross", "snake", "dilated"], fusion="cv_gate", d_state=4)
    op = block.op
    assert op.route_attn is None and all(h.merge_mode == "cv_gate" for h in op.heads)
    randomise(block)
    x = torch.randn(2, 12, 5, 7, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    # Each head fuses its K route grids (batch, K, d_inner, *spatial) with the gate, once per forward.
    import medssm.layers.vision_mamba as module

    calls = []
    original = module.cv_gate_merge

    def spy(grids, threshold=0.0):
        calls.append(tuple(grids.shape))
        return original(grids, threshold)

    monkeypatch.setattr(module, "cv_gate_merge", spy)
    block(x)
    assert calls == [(2, h.num_routes, h.d_inner, 5, 7) for h in op.heads]
    with pytest.raises(ValueError, match="route_weights exist only"):
        op.route_weights([y])
    with pytest.raises(ValueError, match="merge must be 'sum'"):
        MultiHeadScanBlock(2, 12, routes=["cross", "snake"], fusion="cv_gate", merge="weighted")
    with pytest.raises(ValueError, match="fusion must be"):
        MultiHeadScanBlock(2, 12, routes=["cross", "snake"], fusion="concat")
    with pytest.raises(ValueError, match="compares routes"):
        MultiHeadScanBlock(2, 12, routes=["raster", "snake"], fusion="cv_gate")


def test_multi_head_scan_rejects_bad_configs():
    with pytest.raises(ValueError, match="spatial_dims"):
        MultiHeadScanBlock(1, C, routes=["cross", "local"])  # "local" has no 1D form
    with pytest.raises(ValueError, match="heads"):
        MultiHeadScanBlock(2, 2, routes=["cross", "snake", "local"])
    with pytest.raises(ValueError, match="route_kwargs"):
        MultiHeadScanBlock(2, C, routes=["cross", "snake"], route_kwargs=[None])


# --- LBMamba -----------------------------------------------------------------------------------------------


def test_lbmamba_direction_flips_every_two_layers():
    base = get_route("local_bidirectional", window=5)
    forward, flipped = base.orders((3, 4)), base.flipped().orders((3, 4))
    # Hand-worked 3x4 grid, w = 5.
    assert forward.tolist() == [list(range(12)), [4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 11, 10]]
    assert flipped.tolist() == [list(range(11, -1, -1)), [7, 8, 9, 10, 11, 2, 3, 4, 5, 6, 0, 1]]
    for i in range(8):
        block = LBMambaBlock(2, C, window=5, layer_index=i, d_state=4)
        backwards = i % 4 in (2, 3)
        assert block.reverse == backwards and block.op.route.reverse == backwards
        assert torch.equal(block.op.route.orders((3, 4)), flipped if backwards else forward)
        still = LBMambaBlock(2, C, window=5, layer_index=i, alternate=False, d_state=4)
        assert torch.equal(still.op.route.orders((3, 4)), forward)
    # Same weights, other direction: another function.
    torch.manual_seed(0)
    a = LBMambaBlock(2, C, window=5, layer_index=0, d_state=4)
    b = LBMambaBlock(2, C, window=5, layer_index=2, d_state=4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, C, 3, 4)
    assert not torch.allclose(a(x), b(x))
    with pytest.raises(ValueError, match="layer_index"):
        LBMambaBlock(2, C, layer_index=-1)


# --- drop path ---------------------------------------------------------------------------------------------


def test_block_drop_path_only_acts_in_training():
    torch.manual_seed(0)
    plain = VSSBlock(2, C, d_state=4, mlp_ratio=1.0)
    dropped = VSSBlock(2, C, d_state=4, mlp_ratio=1.0, drop_path=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(64, C, 3, 4)
    torch.testing.assert_close(dropped.eval()(x), plain(x))
    train = dropped.train()(x)
    assert not torch.allclose(train, plain(x))
    # Samples whose two branches were both dropped come back unchanged.
    assert any(torch.equal(train[i], x[i]) for i in range(64))
