"""Checks the classifier families' tests share: output shapes at odd sizes, the no-SSM control, scan routes."""

from __future__ import annotations

import torch

from medssm.models import create_model
from medssm.scans import get_route, list_routes

ODD_SIZES = {1: (37,), 2: (19, 23), 3: (9, 11, 7)}
# Parameters of a selective scan (Mamba, Vim's backward branch, SS2D): what ssm=False may remove, and all it may.
SCAN_PARAMETERS = {"x_proj", "dt_proj", "A_log", "D", "x_proj_b", "dt_proj_b", "A_b_log", "D_b", "x_proj_weight",
                   "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"}


def route_cases(spatial_dims: tuple[int, ...]) -> list[tuple[str, int]]:
    """(route, spatial_dims) for every registered route and every dims it supports."""
    cases = []
    for name in list_routes():
        for dims in spatial_dims:
            try:
                get_route(name).num_orders(dims)
            except ValueError:
                continue
            cases.append((name, dims))
    return cases


def check_odd_shape(name: str, spatial_dims: int, **kwargs) -> None:
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, **kwargs)
    y = model(torch.randn(2, 2, *ODD_SIZES[spatial_dims]))
    assert y.shape == (2, 3) and torch.isfinite(y).all()


def train_step(model: torch.nn.Module, x: torch.Tensor) -> None:
    """One Adam step on a cross-entropy loss: finite loss, every parameter gets a gradient and one moves."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def check_no_ssm(name: str, spatial_dims: int, **kwargs) -> None:
    """ssm=False keeps every other parameter (same name and shape), removes only scan parameters (some), and the
    control trains a step."""
    full = dict(create_model(name, spatial_dims=spatial_dims, **kwargs).named_parameters())
    control = create_model(name, spatial_dims=spatial_dims, ssm=False, **kwargs)
    kept = dict(control.named_parameters())
    removed = set(full) - set(kept)
    assert set(kept) <= set(full) and removed
    assert all(kept[n].shape == full[n].shape for n in kept)
    assert all(SCAN_PARAMETERS & set(n.split(".")) for n in removed), sorted(removed)
    assert not any(SCAN_PARAMETERS & set(n.split(".")) for n in kept)
    train_step(control, torch.randn(2, 1, *ODD_SIZES[spatial_dims]))


def check_route(name: str, route: str, spatial_dims: int, **kwargs) -> None:
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=spatial_dims, route=route, **kwargs)
    x = torch.randn(2, 1, *ODD_SIZES[spatial_dims], requires_grad=True)
    y = model(x)
    y.sum().backward()
    assert y.shape == (2, 2) and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
