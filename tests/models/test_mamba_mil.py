"""mamba_mil: any bag size, patch bags, ssm=False removes only the scans' parameters, the bag order matters
(a sequence model) while a permutation-invariant abmil does not care; checkpoint=True gives the same logits and
gradients while its forward leaves a fraction of the memory allocated for the backward."""

import pytest
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


def _logits_and_gradients(model: torch.nn.Module, bag: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(1)  # the same dropout mask in every call
    logits = model(bag)
    return logits, torch.autograd.grad(logits.square().sum(), [bag, *model.parameters()])


@pytest.mark.parametrize("ssm", [True, False])
def test_checkpointing_gives_the_same_logits_and_gradients(ssm):
    torch.manual_seed(0)
    plain = create_model("mamba_mil", in_features=24, num_classes=3, dim=32, rate=3, ssm=ssm).train()
    ckpt = create_model("mamba_mil", in_features=24, num_classes=3, dim=32, rate=3, ssm=ssm, checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    bag = torch.randn(2, 67, 24, requires_grad=True)
    logits, grads = _logits_and_gradients(plain, bag)
    logits_ckpt, grads_ckpt = _logits_and_gradients(ckpt, bag)
    torch.testing.assert_close(logits_ckpt, logits, rtol=0, atol=0)
    assert len(grads) == len(grads_ckpt) and all(g.abs().sum() > 0 for g in grads[:2])
    for a, b in zip(grads_ckpt, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # inference runs the layers once, as without checkpointing
        torch.testing.assert_close(ckpt.eval()(bag), plain.eval()(bag), rtol=0, atol=0)


def _bytes_left_for_backward(model: torch.nn.Module, bag: torch.Tensor) -> int:
    """What one forward leaves allocated (torch's CPU allocator, by the profiler): the graph's saved tensors."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        logits = model(bag)
    assert logits.grad_fn is not None
    return sum(e.self_cpu_memory_usage for e in prof.key_averages())


def test_checkpointing_frees_the_layers_activations_until_the_backward():
    """Per instance the plain forward keeps every layer's (batch, d_inner, n) activations, the scans' saved
    outputs and checkpoints included; with checkpointing only each layer's input is kept (under 25%: the scan
    once held its saved state outside save_for_backward, where checkpointing could not drop it: 87%)."""
    torch.manual_seed(0)
    bag = torch.randn(1, 512, 16)
    held = {c: _bytes_left_for_backward(create_model("mamba_mil", in_features=16, dim=32, dropout=0.0,
                                                     checkpoint=c), bag) for c in (False, True)}
    assert held[False] > 512 * 32 * 4 * 10 and held[True] < 0.25 * held[False]
