"""mamba_mil: any bag size, patch bags, ssm=False removes only the scans' parameters, the bag order matters
(a sequence model) while a permutation-invariant abmil does not care."""

import torch
from mil_checks import check_bags_of_any_size, check_patch_bags

from medssm.models import create_model


def test_bags_of_any_size_and_patches():
    check_bags_of_any_size("mamba_mil", rate=3)
    check_bags_of_any_size("mamba_mil", ssm=False)
    check_patch_bags("mamba_mil")


def test_ssm_false_removes_only_the_scan_parameters():
    full = dict(create_model("mamba_mil").named_parameters())
    plain = dict(create_model("mamba_mil", ssm=False).named_parameters())
    scan = ("x_proj", "dt_proj", "A_log", "D", "x_proj_b", "dt_proj_b", "A_b_log", "D_b")
    removed = {n for n in full if n.startswith("mixers.") and n.split(".")[2] in scan}
    assert removed and set(plain) == set(full) - removed
    assert all(plain[n].shape == full[n].shape for n in plain)


def test_defaults_follow_the_paper_and_the_order_of_the_bag_matters():
    model = create_model("mamba_mil").eval()
    assert len(model.mixers) == 2 and model.mixers[0].rate == 10 and model.mixers[0].d_model == 512
    x = torch.randn(1, 30, 512)
    shuffled = x[:, torch.randperm(30)]
    assert not torch.allclose(model(x), model(shuffled), atol=1e-5)
    abmil = create_model("abmil").eval()
    torch.testing.assert_close(abmil(x), abmil(shuffled), rtol=1e-4, atol=1e-5)
