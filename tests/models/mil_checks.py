"""Checks every MIL family passes: any bag size (n = 1 included), patch bags through the encoder, instance
scores, and a bag's logits not depending on the other bags of the batch."""

from __future__ import annotations

import torch

from medssm.models import create_model


def check_bags_of_any_size(name: str, **kwargs) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_features=24, num_classes=3, dim=32, **kwargs).eval()
    for n in (1, 2, 5, 37, 300):
        logits, scores = model(torch.randn(2, n, 24), return_instance_scores=True)
        assert logits.shape == (2, 3) and scores.shape == (2, n)
        assert torch.isfinite(logits).all() and torch.isfinite(scores).all()
    bags = torch.randn(2, 9, 24)
    torch.testing.assert_close(model(bags)[1:], model(bags[1:]), rtol=1e-4, atol=1e-5)  # per-bag results


def check_patch_bags(name: str, **kwargs) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, encoder="colon_cnn", dim=32, **kwargs)
    x = torch.rand(1, 6, 3, 27, 27)
    logits = model(x)
    assert logits.shape == (1, 2)
    logits.sum().backward()
    assert model.encoder.features[0].weight.grad is not None  # the encoder trains end to end
