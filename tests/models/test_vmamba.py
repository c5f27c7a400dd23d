"""VMamba: shapes in 1D/2D/3D at odd sizes, the no-SSM control, every scan route, its hierarchy and the VMamba-T
parameter count."""

from __future__ import annotations

import pytest
from _classifier_checks import check_no_ssm, check_odd_shape, check_route, route_cases

from medssm.layers import PatchMerging, VSSBlock
from medssm.models import count_parameters
from medssm.models.vmamba import VMamba

TINY = {"dims": (8, 16), "depths": (1, 1), "d_state": 4}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shape_at_odd_sizes(dims):
    check_odd_shape("vmamba", dims, **TINY)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_no_ssm_removes_only_the_scan_and_trains(dims):
    check_no_ssm("vmamba", dims, **TINY)


@pytest.mark.parametrize("route,dims", route_cases((1, 2, 3)))
def test_every_route_runs(route, dims):
    check_route("vmamba", route, dims, **TINY)


def test_hierarchy_uses_cross_vss_blocks_and_patch_merging():
    model = VMamba(2, 1, 4, dims=(8, 16, 32), depths=(1, 2, 1))
    assert [len(stage) for stage in model.stages] == [1, 2, 1]
    assert all(isinstance(b, VSSBlock) and b.op.route.name == "cross" and b.op.num_routes == 4
               for stage in model.stages for b in stage)
    assert all(isinstance(m, PatchMerging) for m in model.downsamples) and model.stride == 2 * 4
    assert VMamba(3, dims=(8, 16), depths=(1, 1)).stages[0][0].op.num_routes == 6


def test_vmamba_t_v0_parameter_count():
    # VMamba-T as in the paper's first version (v0: no MLP, d_state 16): the paper counts 22M at 1000 classes;
    # this build counts 22.89M (it keeps the LayerNorms of patch embedding, merging and the head).
    model = VMamba(2, 3, 1000, dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), patch_size=4, mlp_ratio=0.0)
    assert 21.5e6 < count_parameters(model) < 23e6
    print(f"VMamba-T (v0): {count_parameters(model):,} parameters")


