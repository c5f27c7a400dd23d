"""selective_scan's argument checks: every invalid input is a ValueError naming the argument and its expected
shape (or dtype, or device)."""

from __future__ import annotations

import pytest
import torch
from scan_inputs import Case, make_inputs

from medssm.ops import selective_scan
from medssm.ops._checks import check_scan_args

# batch 2, d 6, N 3, L 5: distinct sizes, so a message that names the expected shape can be recognised.
VALID = Case(batch=2, dim=6, d_state=3, seqlen=5)
U_SHAPE = r"\(2, 6, 5\)"
BC_EXPECTED = r"\(6, 3\) fixed, \(2, 3, 5\) selective or \(2, G, 3, 5\) grouped"
TENSOR_ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def valid_kwargs() -> dict:
    kwargs, _ = make_inputs(VALID)
    return {name: value.detach() if isinstance(value, torch.Tensor) else value
            for name, value in kwargs.items()}


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(shape)


def bad_shapes() -> list:
    """(overrides, regex the message must contain) for every shape error, one pytest.param each."""
    cases = {
        "u-rank2": ({"u": randn(2, 6)}, r"\bu must .*\(batch, d, L\)"),
        "u-rank4": ({"u": randn(2, 6, 5, 1)}, r"\bu must .*\(batch, d, L\)"),
        "u-not-a-tensor": ({"u": [[0.0] * 5] * 6}, r"\bu must .*\(batch, d, L\)"),
        "delta-rank2": ({"delta": randn(2, 6)}, rf"\bdelta must .*{U_SHAPE}"),
        "delta-rank4": ({"delta": randn(2, 6, 5, 1)}, rf"\bdelta must .*{U_SHAPE}"),
        "delta-L": ({"delta": randn(2, 6, 4)}, rf"\bdelta .*({U_SHAPE}|L=5)"),
        "delta-d": ({"delta": randn(2, 7, 5)}, rf"\bdelta must .*{U_SHAPE}"),
        "delta-batch": ({"delta": randn(3, 6, 5)}, rf"\bdelta must .*{U_SHAPE}"),
        "z-rank2": ({"z": randn(2, 6)}, rf"\bz must .*{U_SHAPE}"),
        "z-rank4": ({"z": randn(2, 6, 5, 1)}, rf"\bz must .*{U_SHAPE}"),
        "z-L": ({"z": randn(2, 6, 4)}, rf"\bz must .*{U_SHAPE}"),
        "A-rank1": ({"A": randn(6)}, r"\bA must .*\(6, N\)"),
        "A-rank3": ({"A": randn(6, 3, 1)}, r"\bA must .*\(6, N\)"),
        "A-d": ({"A": randn(7, 3)}, r"\bA must .*\(6, N\)"),
        "A-N0": ({"A": randn(6, 0), "B": randn(6, 0), "C": randn(6, 0)}, r"\bA .*N=0.*between 1 and 256"),
        "A-N257": ({"A": randn(6, 257), "B": randn(6, 257), "C": randn(6, 257)},
                   r"\bA .*N=257.*between 1 and 256"),
        "D-length": ({"D": randn(7)}, r"\bD must have shape \(6,\)"),
        "D-rank2": ({"D": randn(6, 1)}, r"\bD must have shape \(6,\)"),
        "D-not-a-tensor": ({"D": [1.0] * 6}, r"\bD must have shape \(6,\), got list"),
        "delta_bias-length": ({"delta_bias": randn(5)}, r"\bdelta_bias must have shape \(6,\)"),
        "delta_bias-scalar": ({"delta_bias": torch.tensor(0.5)}, r"\bdelta_bias must have shape \(6,\)"),
        "L0": ({"u": randn(2, 6, 0), "delta": randn(2, 6, 0), "z": randn(2, 6, 0), "B": randn(2, 3, 0),
                "C": randn(2, 3, 0)}, r"\bu must have .*L >= 1"),
    }
    for name in ("B", "C"):
        wrong = {
            "fixed-N": randn(6, 4),
            "fixed-d": randn(5, 3),
            "selective-L": randn(2, 3, 4),
            "selective-N": randn(2, 4, 5),
            "selective-batch": randn(3, 3, 5),
            "grouped-N": randn(2, 2, 4, 5),
            "grouped-L": randn(2, 2, 3, 6),
            "grouped-batch": randn(3, 2, 3, 5),
            "grouped-G0": randn(2, 0, 3, 5),
            "rank1": randn(3),
            "rank5": randn(2, 2, 3, 5, 1),
        }
        for what, tensor in wrong.items():
            cases[f"{name}-{what}"] = ({name: tensor}, rf"\b{name} must .*{BC_EXPECTED}")
        cases[f"{name}-G-not-dividing-d"] = ({name: randn(2, 4, 3, 5)}, rf"\b{name} .*G=4.*d=6")
    return [pytest.param(overrides, match, id=case_id) for case_id, (overrides, match) in cases.items()]


@pytest.mark.parametrize("overrides,match", bad_shapes())
def test_bad_shape(overrides, match):
    with pytest.raises(ValueError, match=match):
        selective_scan(**{**valid_kwargs(), **overrides}, backend="reference")


def test_complex_A():
    kwargs = valid_kwargs()
    with pytest.raises(ValueError, match=r"\bA must be real"):
        selective_scan(**{**kwargs, "A": kwargs["A"].to(torch.complex64)}, backend="reference")


@pytest.mark.parametrize("name", TENSOR_ARGS)
def test_integer_dtype(name):
    kwargs = valid_kwargs()
    with pytest.raises(ValueError, match=rf"\b{name} must be a floating-point"):
        selective_scan(**{**kwargs, name: kwargs[name].to(torch.int64)}, backend="reference")


@pytest.mark.parametrize("name", TENSOR_ARGS[1:])
def test_mixed_devices(name):
    kwargs = valid_kwargs()
    with pytest.raises(ValueError, match=rf"\b{name} is on meta but u is on cpu"):
        selective_scan(**{**kwargs, name: kwargs[name].to("meta")}, backend="reference")


def test_u_on_another_device_than_the_rest():
    kwargs = valid_kwargs()
    with pytest.raises(ValueError, match=r"\bdelta is on cpu but u is on meta"):
        selective_scan(**{**kwargs, "u": kwargs["u"].to("meta")}, backend="reference")


@pytest.mark.parametrize("b_mode,c_mode,groups", [("fixed", "selective", 1), ("selective", "grouped", 3),
                                                  ("grouped", "fixed", 2)])
def test_valid_arguments_give_their_sizes(b_mode, c_mode, groups):
    kwargs, _ = make_inputs(Case(batch=2, dim=6, d_state=3, seqlen=5, b_mode=b_mode, c_mode=c_mode,
                                 groups=groups))
    shape = check_scan_args(*(kwargs[name] for name in TENSOR_ARGS))
    assert (shape.batch, shape.dim, shape.d_state, shape.seqlen) == (2, 6, 3, 5)
    assert (shape.b_mode, shape.c_mode) == (b_mode, c_mode)
    assert (shape.b_groups, shape.c_groups) == (groups if b_mode == "grouped" else 1,
                                                groups if c_mode == "grouped" else 1)


def test_shared_tensor_check_names_the_dimensions_it_expects():
    """The other ops (state update, SSD) check their tensors with the same helper: None passes, a wrong shape or
    a non-tensor names the expected dimensions, an integer tensor the dtype."""
    from medssm.ops._checks import check_tensor

    check_tensor(None, "z", (2, 3))
    check_tensor(torch.zeros(2, 3), "z", (2, 3), "(batch, dim)")
    with pytest.raises(ValueError, match=r"^z must have shape \(batch, dim\) = \(2, 3\), got \(3, 2\)$"):
        check_tensor(torch.zeros(3, 2), "z", (2, 3), "(batch, dim)")
    with pytest.raises(ValueError, match=r"^z must have shape \(2, 3\), got int$"):
        check_tensor(5, "z", (2, 3))
    with pytest.raises(ValueError, match=r"^z must be a floating-point tensor"):
        check_tensor(torch.zeros(2, 3, dtype=torch.int64), "z", (2, 3))
