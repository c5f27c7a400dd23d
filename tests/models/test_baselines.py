"""MONAI baselines (unet, segresnet, swin_unetr): any input size through padding, MONAI's networks and keys
unchanged, the 0.5M BasicUNet option, and no route/ssm arguments."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, SegResNet, SwinUNETR

from medssm.models import count_parameters, create_model
from medssm.models.baselines import UNET_0_5M

TINY = {"unet": {"features": (4, 4, 8, 8, 16, 4)}, "segresnet": {"init_filters": 8},
        "swin_unetr": {"feature_size": 12, "depths": (1, 1, 1, 1)}}
SIZES = {2: (9, 13), 3: (5, 7, 3)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shape_at_odd_sizes(name, spatial_dims):
    model = create_model(name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, **TINY[name]).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 2, *SIZES[spatial_dims]))
    assert y.shape == (2, 3, *SIZES[spatial_dims]) and torch.isfinite(y).all()


@pytest.mark.parametrize("name,monai_net,size", [
    ("unet", lambda: BasicUNet(2, 1, 2, features=TINY["unet"]["features"]), (32, 48)),
    ("segresnet", lambda: SegResNet(2, 8, 1, 2), (16, 24)),
    ("swin_unetr", lambda: SwinUNETR(1, 2, spatial_dims=2, **TINY["swin_unetr"]), (64, 32)),
])
def test_monai_weights_load_and_sizes_it_accepts_give_monais_output(name, monai_net, size):
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=2, **TINY[name]).eval()
    reference = monai_net().eval()
    model.load_state_dict(reference.state_dict(), strict=True)  # MONAI's keys: its checkpoints load as they are
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_parameter_counts_and_the_half_million_unet():
    counts = {name: count_parameters(create_model(name, spatial_dims=2)) for name in TINY}
    small = count_parameters(create_model("unet", spatial_dims=2, features=UNET_0_5M))
    print(f"2D defaults: {counts}; unet features={UNET_0_5M}: {small:,}")
    assert counts["unet"] == count_parameters(BasicUNet(2, 1, 2))
    assert 0.45e6 < small < 0.55e6  # the "MONAI BasicUNet of 0.5M parameters, F1 0.818 on DRIVE" anchor


@pytest.mark.parametrize("name", sorted(TINY))
def test_baselines_take_no_route_or_ssm_and_only_2d_3d(name):
    with pytest.raises(TypeError, match=f"model '{name}'.*ssm"):
        create_model(name, ssm=False)
    with pytest.raises(TypeError, match=f"model '{name}'.*route"):
        create_model(name, route="cross")
    with pytest.raises(ValueError, match="spatial_dims"):
        create_model(name, spatial_dims=1)


# --- resnet18 (classification) -----------------------------------------------------------------------------------


def test_resnet18_is_medmnist_resnet18_28_by_default():
    from medssm.models import count_parameters, create_model

    model = create_model("resnet18", spatial_dims=2, in_channels=1, out_channels=2)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.no_max_pool
    # torchvision's ResNet-18 (11,689,512) with conv1 3x3 on 1 channel, a 2-class fc, and MONAI's biases on the
    # three downsampling convs (128 + 256 + 512)
    assert count_parameters(model) == 11_689_512 - 64 * 3 * 49 + 64 * 9 - (512 * 1000 + 1000) + (512 * 2 + 2) + 896
    imagenet = create_model("resnet18", spatial_dims=2, small_input=False)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2) and not imagenet.no_max_pool
    for dims, size in ((1, (37,)), (3, (9, 11, 7))):
        y = create_model("resnet18", spatial_dims=dims, in_channels=2, out_channels=3)(torch.randn(2, 2, *size))
        assert y.shape == (2, 3)


def test_residual_unet_adds_the_unet_output_to_its_input():
    from medssm.models import create_model
    from medssm.models.baselines import PaddedBasicUNet

    torch.manual_seed(0)
    model = create_model("residual_unet", features=(4, 4, 8, 8, 16, 4)).eval()
    plain = PaddedBasicUNet(2, 1, 1, features=(4, 4, 8, 8, 16, 4)).eval()
    plain.load_state_dict(model.state_dict())  # MONAI's keys, unchanged
    x = torch.rand(1, 1, 19, 23)
    torch.testing.assert_close(model(x), x + plain(x))
    with pytest.raises(ValueError, match="out_channels must equal in_channels=1, got 2"):
        create_model("residual_unet", out_channels=2)
