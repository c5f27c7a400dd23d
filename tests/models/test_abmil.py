"""abmil: any bag size, patch bags, attention and gated attention, scores that are the pooling weights."""

import torch
from mil_checks import check_bags_of_any_size, check_patch_bags

from medssm.models import count_parameters, create_model


def test_bags_of_any_size_and_patches():
    for gated in (False, True):
        check_bags_of_any_size("abmil", gated=gated)
        check_patch_bags("abmil", gated=gated)


def test_gated_attention_adds_the_gate_and_scores_are_the_attention_weights():
    plain, gated = create_model("abmil"), create_model("abmil", gated=True)
    assert plain.pool.U is None and gated.pool.U is not None
    assert count_parameters(gated) - count_parameters(plain) == 512 * 128 + 128
    x = torch.randn(1, 10, 512)
    gated.eval()
    logits, a = gated(x, return_instance_scores=True)
    torch.testing.assert_close(a.sum(1), torch.ones(1))
    h = gated.project(x)
    torch.testing.assert_close(logits, gated.head((a[..., None] * h).sum(1)))
