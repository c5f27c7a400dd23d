"""Vision Mamba: shapes in 1D/2D/3D at odd sizes, the no-SSM control, every scan route, the middle class token,
Vim's ``*_b`` names, position-embedding interpolation at another input size, and Stochastic Layer-Wise Shuffle."""

from __future__ import annotations

import pytest
import torch
from _classifier_checks import check_no_ssm, check_odd_shape, check_route, route_cases

from medssm.models import count_parameters, create_model
from medssm.models.vim import VisionMamba, resize_pos_embed, shuffle_probabilities

TINY = {"embed_dim": 16, "depth": 2, "d_state": 4}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shape_at_odd_sizes(dims):
    check_odd_shape("vim", dims, **TINY)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_no_ssm_removes_only_the_scan_and_trains(dims):
    check_no_ssm("vim", dims, **TINY)


@pytest.mark.parametrize("route,dims", route_cases((1, 2, 3)))
def test_every_route_runs(route, dims):
    check_route("vim", route, dims, **TINY)


def test_vim_parameter_names_and_vim_tiny_count():
    names = {n for n, _ in create_model("vim", **TINY).named_parameters()}
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed", "layers.0.norm.weight", "norm_f.weight",
                "head.weight", "layers.1.mixer.in_proj.weight", "layers.1.mixer.A_log", "layers.1.mixer.A_b_log",
                "layers.1.mixer.conv1d_b.weight", "layers.1.mixer.x_proj_b.weight", "layers.1.mixer.dt_proj_b.bias",
                "layers.1.mixer.D_b"):
        assert key in names, key
    # Vim-Ti (released: 7M parameters at 1000 classes, 224x224 RGB, patch 16, 14x14 grid + 1 class token)
    tiny = VisionMamba(2, 3, 1000, img_size=224, patch_size=16, embed_dim=192, depth=24)
    assert tiny.pos_embed.shape == (1, 197, 192)
    assert round(count_parameters(tiny) / 1e6) == 7


def test_class_token_sits_in_the_middle_of_each_sequence():
    model = VisionMamba(2, 1, 2, img_size=12, patch_size=4, **TINY).eval()  # 3x3 grid, T = 9: class token at 4
    seen = []
    model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randn(1, 1, 12, 12)
    model(x)
    tokens = seen[0].transpose(1, 2)[0]  # (T + 1, D)
    patches = model.patch_embed(x) + resize_pos_embed(model.pos_embed, (3, 3), (3, 3))[1]
    cls = model.cls_token + model.pos_embed[:, 4:5]
    torch.testing.assert_close(tokens[4], cls[0, 0])
    torch.testing.assert_close(torch.cat((tokens[:4], tokens[5:])), patches.flatten(2)[0].T)
    assert model.pos_embed.shape == (1, 10, 16)  # 9 patches and the class token


def test_position_embedding_is_interpolated_to_other_sizes():
    # Built for 28x28 (7x7 grid of 4x4 patches), run at 64x64 (16x16): the ratio of Vim's 224 -> 512 failure.
    model = VisionMamba(2, 1, 2, img_size=28, patch_size=4, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2)
        # at the built size the embedding is used as is
        cls_pos, grid = resize_pos_embed(model.pos_embed, (7, 7), (7, 7))
        assert torch.equal(grid.flatten(2).transpose(1, 2),
                           torch.cat((model.pos_embed[:, :24], model.pos_embed[:, 25:]), dim=1))
        assert torch.equal(cls_pos, model.pos_embed[:, 24:25])
        # a ramp along the first axis stays a ramp (bilinear), constant along the second axis, class entry kept
        ramp = torch.linspace(-1, 1, 7).view(7, 1).expand(7, 7).reshape(1, 49, 1).expand(1, 49, 16)
        pos = torch.cat((ramp[:, :24], torch.full((1, 1, 16), 5.0), ramp[:, 24:]), dim=1)
        cls_pos, grid = resize_pos_embed(pos, (7, 7), (16, 16))
        assert grid.shape == (1, 16, 16, 16) and torch.equal(cls_pos, torch.full((1, 1, 16), 5.0))
        assert torch.allclose(grid[0, 0], grid[0, 0, :, :1].expand(16, 16))
        assert (grid[0, 0, 1:, 0] >= grid[0, 0, :-1, 0]).all() and grid[0, 0, -1, 0] > grid[0, 0, 0, 0]
    # 3D and 1D interpolate too
    assert VisionMamba(3, 1, 2, img_size=8, patch_size=4, **TINY)(torch.randn(1, 1, 12, 16, 9)).shape == (1, 2)
    assert VisionMamba(1, 1, 2, img_size=16, patch_size=4, **TINY)(torch.randn(1, 1, 50)).shape == (1, 2)


def test_layer_shuffle_probabilities_grow_with_depth():
    assert shuffle_probabilities(5, 0.4) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert shuffle_probabilities(1, 0.5) == [0.0]
    with pytest.raises(ValueError, match="shuffle_prob"):
        shuffle_probabilities(3, 1.5)


def test_layer_shuffle_is_the_identity_at_inference():
    torch.manual_seed(0)
    plain = VisionMamba(2, 1, 2, depth=3, embed_dim=16, d_state=4).eval()
    torch.manual_seed(0)
    shuffled = VisionMamba(2, 1, 2, depth=3, embed_dim=16, d_state=4, layer_shuffle=True, shuffle_prob=1.0).eval()
    assert plain.state_dict().keys() == shuffled.state_dict().keys()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(shuffled(x), plain(x), rtol=0, atol=0)
    assert shuffled.last_shuffled == [False, False, False]


def test_layer_shuffle_rate_in_training_with_a_seeded_generator():
    model = VisionMamba(2, 1, 2, img_size=8, patch_size=4, depth=3, embed_dim=8, d_state=4, layer_shuffle=True,
                       shuffle_prob=0.6).train()
    model.generator = torch.Generator().manual_seed(0)
    counts, runs = torch.zeros(3), 300
    with torch.no_grad():
        for _ in range(runs):
            model(torch.randn(1, 1, 8, 8))
            counts += torch.tensor(model.last_shuffled, dtype=torch.float)
    rates = counts / runs  # expected 0, 0.3, 0.6; 4 binomial standard deviations at most 0.12
    assert rates[0] == 0 and abs(rates[1] - 0.3) < 0.11 and abs(rates[2] - 0.6) < 0.12
    # the same seed gives the same draws
    model.generator = torch.Generator().manual_seed(0)
    model(torch.randn(1, 1, 8, 8))
    first = list(model.last_shuffled)
    model.generator = torch.Generator().manual_seed(0)
    model(torch.randn(1, 1, 8, 8))
    assert model.last_shuffled == first


def test_shuffled_layer_restores_the_token_order():
    # With a token-wise block the output cannot depend on the order the tokens were read in: a shuffled layer
    # that puts its outputs back gives exactly the unshuffled result (a missing restore would permute them).
    model = VisionMamba(2, 1, 2, img_size=12, patch_size=4, depth=2, embed_dim=8, d_state=4, layer_shuffle=True,
                       shuffle_prob=1.0).train()

    class TokenWise(torch.nn.Module):
        def forward(self, x):
            return x * 2 + torch.arange(x.shape[-1], dtype=x.dtype) * 0  # ignores positions

    grid, cls = torch.randn(2, 8, 3, 3), torch.randn(2, 1, 8)
    orders = model.route.orders((3, 3))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    plain = model.run_layer(TokenWise(), grid, cls, orders)
    shuffled = model.run_layer(TokenWise(), grid, cls, orders[:, perm])
    torch.testing.assert_close(shuffled[0], plain[0])
    torch.testing.assert_close(shuffled[1], plain[1])
    # and with a real (order-dependent) block the shuffle changes the result
    block = model.layers[1]
    assert not torch.allclose(model.run_layer(block, grid, cls, orders[:, perm])[0],
                              model.run_layer(block, grid, cls, orders)[0])
