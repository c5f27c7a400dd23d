"""The VM-UNet family (vm_unet, mhs_vm_unet, msvm_unet): shapes at odd sizes, VM-UNet's published parameter
count, the no-SSM control, every scan route, and each variant's distinctive structure. Tiny widths keep it
quick; the registry-wide checks (tests/models/test_registry.py) run the default sizes."""

from __future__ import annotations

import pytest
import torch

from medssm.layers import MultiHeadScanBlock, PatchExpanding, VSSBlock
from medssm.models import count_parameters, create_model
from medssm.models.vm_unet import (
    LargeKernelPatchExpanding,
    MultiScaleFFN,
    MultiScaleVSSBlock,
    VMUNet,
    _pixel_shuffle,
)
from medssm.scans import get_route, list_routes

MODELS = ("vm_unet", "mhs_vm_unet", "msvm_unet")
TINY = dict(features=(8, 16, 32, 64), depths=(1, 1, 1, 1), d_state=4)
SCAN_PARAMETERS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")

# VM-UNet's released VSSM (JCruan519/VM-UNet, models/vmunet/vmamba.py) at dims (96, 192, 384, 768), depths
# (2, 2, 2, 2) / (2, 2, 2, 1), in_chans 3, num_classes 9, counted by instantiating it (with its CUDA imports
# stubbed): 27,427,761 -- the paper's "27.43M". Our blocks keep SS2D's parameters one for one, so the count
# must be equal; a missing MLP-less block, a wrong skip (concat instead of add), a different expanding or an
# extra norm all change it.
VM_UNET_RELEASED_PARAMS = 27_427_761


def _tiny(name: str, dims: int, **kwargs) -> torch.nn.Module:
    decoder = (0, 1, 1, 1) if name == "msvm_unet" else (1, 1, 1, 1)
    return create_model(name, spatial_dims=dims, in_channels=2, out_channels=3,
                        **{**TINY, "decoder_depths": decoder, **kwargs})


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dims,size", [(2, (19, 23)), (3, (9, 11, 7))])
def test_output_shape_at_odd_sizes(name, dims, size):
    torch.manual_seed(0)
    model = _tiny(name, dims)
    y = model(torch.randn(2, 2, *size))
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()


def test_vm_unet_parameter_count_matches_the_released_model():
    model = create_model("vm_unet", in_channels=3, out_channels=9, features=(96, 192, 384, 768))
    n = count_parameters(model)
    print(f"vm_unet at the paper's widths: {n:,} parameters (released: {VM_UNET_RELEASED_PARAMS:,})")
    assert n == VM_UNET_RELEASED_PARAMS


def test_variants_at_the_paper_widths_print_their_counts():
    counts = {name: count_parameters(create_model(name, in_channels=3, out_channels=9, features=(96, 192, 384, 768)))
              for name in MODELS}
    print("parameters at (96, 192, 384, 768):", {k: f"{v:,}" for k, v in counts.items()})
    # MHS-VM's heads work in dim/4 subspaces: fewer parameters than VM-UNet; MSVM-UNet adds MLPs, MS-FFNs, LKPE.
    assert counts["mhs_vm_unet"] < counts["vm_unet"] < counts["msvm_unet"]


@pytest.mark.parametrize("name", MODELS)
def test_no_ssm_removes_only_the_scan_parameters_and_trains(name):
    torch.manual_seed(0)
    small = dict(features=(8, 16), depths=(1, 1), decoder_depths=(1, 1))
    with_ssm, without = _tiny(name, 2, **small), _tiny(name, 2, ssm=False, **small)
    kept = dict(with_ssm.named_parameters())
    names = [n for n, _ in without.named_parameters()]
    assert set(names) < set(kept)
    assert all(n.split(".")[-1] in SCAN_PARAMETERS for n in set(kept) - set(names))
    assert not [n for n in names if n.split(".")[-1] in SCAN_PARAMETERS]
    optimizer = torch.optim.SGD(without.parameters(), lr=0.1)
    x, target = torch.randn(2, 2, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = torch.nn.functional.cross_entropy(without(x), target)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in without.parameters())
    optimizer.step()


def _routes(dims: int) -> list[str]:
    return [r for r in list_routes() if dims in get_route(r).spatial_dims]


@pytest.mark.parametrize("dims", (2, 3))
@pytest.mark.parametrize("name", ("vm_unet", "mhs_vm_unet"))
def test_every_route_builds_and_runs(name, dims):
    size = (16, 16) if dims == 2 else (8, 8, 8)
    for route in _routes(dims):
        torch.manual_seed(0)
        model = create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, route=route, features=(4, 8),
                             depths=(1, 1), decoder_depths=(1, 1), d_state=2)
        blocks = [m for m in model.modules() if isinstance(m, (VSSBlock, MultiHeadScanBlock))]
        if name == "vm_unet":
            assert {b.op.route.name for b in blocks} == {route}
        else:
            assert {h.route.name for b in blocks for h in b.op.heads} == {route}
        with torch.no_grad():
            assert model(torch.randn(1, 2, *size)).shape == (1, 3, *size), route


def test_default_routes_per_dims():
    assert {m.op.route.name for m in _tiny("vm_unet", 2).modules() if isinstance(m, VSSBlock)} == {"cross"}
    assert {m.op.route.name for m in _tiny("vm_unet", 3).modules() if isinstance(m, VSSBlock)} == {"tri_oriented"}
    heads = [h.route.name for m in _tiny("mhs_vm_unet", 2).modules() if isinstance(m, MultiHeadScanBlock)
             for h in m.op.heads]
    assert heads[:4] == ["cross", "snake", "local", "dilated"]


def test_vm_unet_structure_follows_the_released_code():
    model = create_model("vm_unet", features=(96, 192, 384, 768), drop_path_rate=0.2)
    assert [len(s) for s in model.encoder] == [2, 2, 2, 2] and [len(s) for s in model.decoder] == [2, 2, 2, 1]
    blocks = [m for m in model.modules() if isinstance(m, VSSBlock)]
    assert all(b.mlp is None for b in blocks)  # VM-UNet's VSS block has no MLP
    assert [b.op.d_model for b in model.decoder[0]] == [768, 768]  # the first decoder stage: the bottleneck
    assert all(isinstance(u, PatchExpanding) for u in model.upsamples) and model.fuse is None
    assert model.final_up.out_dim == 24 and model.final_up.scale == 4
    enc = [b.drop_path.p for s in model.encoder for b in s]
    dec = [b.drop_path.p for s in model.decoder for b in s]
    assert enc == sorted(enc) and dec == sorted(dec, reverse=True) and enc[-1] == pytest.approx(0.2)


def test_vm_unet_adds_each_encoder_stage_input_before_expanding():
    # Released VM-UNet: y = expand(y + s_{l+1}), s_{l+1} the merged features entering encoder level l+1.
    torch.manual_seed(0)
    model = _tiny("vm_unet", 2).eval()
    seen = {}

    def keep(key):
        return lambda module, args, out: seen.__setitem__(key, (args[0], out))

    for i in range(3):
        model.downsamples[i].register_forward_hook(keep(("down", i)))
        model.upsamples[i].register_forward_hook(keep(("up", i)))
        model.decoder[i].register_forward_hook(keep(("dec", i)))
    model(torch.randn(1, 2, 32, 32))
    for i in range(3):
        expected = seen[("dec", i)][1] + seen[("down", 2 - i)][1]
        torch.testing.assert_close(seen[("up", i)][0], expected)


def test_mhs_vm_unet_uses_four_scan_heads():
    model = _tiny("mhs_vm_unet", 2)
    blocks = [m for m in model.modules() if isinstance(m, MultiHeadScanBlock)]
    assert len(blocks) == 8 and all(b.op.num_heads == 4 and b.mlp is None for b in blocks)
    assert not any(isinstance(m, VSSBlock) for m in model.modules())


def test_msvm_unet_structure():
    model = create_model("msvm_unet", features=(96, 192, 384, 768))
    assert [len(s) for s in model.decoder] == [0, 2, 2, 2]
    assert all(type(b) is VSSBlock and b.mlp is not None for s in model.encoder for b in s)
    decoder_blocks = [b for s in model.decoder for b in s]
    assert all(isinstance(b, MultiScaleVSSBlock) for b in decoder_blocks)
    kernels = [c.kernel_size for c in decoder_blocks[0].mlp.multiscale_conv.dw_convs]
    assert kernels == [(1, 1), (3, 3), (5, 5)]
    assert all(isinstance(u, LargeKernelPatchExpanding) for u in model.upsamples)
    assert [f.in_channels for f in model.fuse] == [768, 384, 192]  # concat(skip, up) -> 1x1 conv
    assert model.final_up.out_dim == 96 and model.final_up.expand[0].out_channels == 16 * 96


def test_pixel_shuffle_reads_channels_as_offsets_then_features():
    scale, c = 2, 3
    x = torch.randn(1, scale * scale * c, 2, 3)
    y = _pixel_shuffle(x, scale)
    assert y.shape == (1, c, 4, 6)
    for p1 in range(scale):
        for p2 in range(scale):
            for k in range(c):
                torch.testing.assert_close(y[0, k, p1::scale, p2::scale], x[0, (p1 * scale + p2) * c + k])
    # In 3D the same channel order as PatchExpanding's (Swin-Unet's) linear expanding.
    expanding = PatchExpanding(3, 4, 2, norm=False)
    x = torch.randn(2, 4, 3, 2, 5)
    channels_first = torch.einsum("oc,bc...->bo...", expanding.expand.weight, x)
    torch.testing.assert_close(_pixel_shuffle(channels_first, 2), expanding(x))
    lkpe = LargeKernelPatchExpanding(3, 4, 2, scale=2).eval()
    assert lkpe(x).shape == (2, 2, 6, 4, 10)


def test_ms_ffn_adds_its_depthwise_convs_to_the_identity():
    torch.manual_seed(0)
    ffn = MultiScaleFFN(2, 6, mlp_ratio=2.0, kernel_sizes=(3, 5, 7))
    x = torch.randn(2, 5, 4, 6)
    for conv in ffn.multiscale_conv.dw_convs:
        torch.nn.init.zeros_(conv.weight)
    torch.testing.assert_close(ffn(x), ffn.fc2(ffn.act(ffn.fc1(x))))
    with pytest.raises(ValueError, match="odd"):
        MultiScaleFFN(2, 6, kernel_sizes=(2,))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="spatial_dims 2 or 3"):
        VMUNet(spatial_dims=1)
    with pytest.raises(ValueError, match="skip must be one of"):
        create_model("vm_unet", skip="mul")
    with pytest.raises(ValueError, match="one entry per level"):
        create_model("vm_unet", features=(8, 16, 32))
