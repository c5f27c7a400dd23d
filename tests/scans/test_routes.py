"""Scan routes: permutations, exact round trips, gradients, hand-worked orderings, caching and the registry."""

import math

import pytest
import torch

from medssm.scans import LocalBidirectionalRoute, ScanRoute, get_route, list_routes, register_route

NAMES = ["bidirectional", "cross", "dilated", "local", "local_bidirectional", "nested_s", "raster", "snake",
         "tri_oriented"]
# Every route with its defaults, plus the window/rate variants that give partial windows on small grids.
CONFIGS = [(name, {}) for name in NAMES] + [
    ("local", {"window": 2}),
    ("local", {"window": 3, "column_first": True, "reverse": False}),
    ("dilated", {"rate": 3, "reverse": False}),
    ("local_bidirectional", {"window": 3, "reverse": True}),
    ("nested_s", {"width": 2}),
    ("nested_s", {"width": 3, "shift": 1}),
]
SHAPES = [(1,), (7,), (1, 1), (3, 4), (5, 7), (2, 13), (8, 8), (1, 1, 1), (2, 3, 5), (4, 4, 4)]


def config_id(config):
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def route_for(config, spatial_dims) -> ScanRoute:
    route = get_route(config[0], **config[1])
    if spatial_dims not in route.spatial_dims:
        pytest.skip(f"{config[0]} does not take {spatial_dims}D grids")
    return route


def integer_grid(*shape):
    """Random integer-valued floats, so that sums are exact."""
    return torch.randint(-50, 50, shape, generator=torch.Generator().manual_seed(0)).double()


def test_registry_lists_every_route():
    assert list_routes() == NAMES


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_orders_are_permutations(config, shape):
    route = route_for(config, len(shape))
    orders = route.orders(shape)
    k, t = route.num_orders(len(shape)), math.prod(shape)
    assert orders.dtype == torch.long and orders.shape == (k, t)
    assert torch.equal(orders.sort(-1).values, torch.arange(t).expand(k, t))
    inverse = route.inverse_orders(shape)
    assert torch.equal(orders.gather(-1, inverse), torch.arange(t).expand(k, t))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_gather_scatter_merge_round_trip(config, shape):
    route = route_for(config, len(shape))
    k, t = route.num_orders(len(shape)), math.prod(shape)
    x = integer_grid(2, 3, *shape)
    y = route.gather(x)
    assert y.shape == (2, k, 3, t) and y.dtype == x.dtype
    assert torch.equal(y, x.flatten(2)[:, :, route.orders(shape)].transpose(1, 2))
    assert torch.equal(route.scatter(y, shape), x.unsqueeze(1).expand(2, k, 3, *shape))
    assert torch.equal(route.merge(y, shape), k * x)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name, shape):
    route = route_for((name, {"window": 2} if "local" in name else {}), len(shape))
    k, t = route.num_orders(len(shape)), math.prod(shape)
    weight = torch.randn(1, k, 2, t, dtype=torch.float64)  # so every sequence position gets its own gradient
    x = torch.randn(1, 2, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: route.merge(route.gather(v) * weight, shape), (x,))
    y = torch.randn(1, k, 2, t, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: route.scatter(v, shape) * 2, (y,))
    assert torch.autograd.gradgradcheck(lambda v: route.merge(v, shape) * 2, (y,))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_merge_is_the_sum_of_the_scattered_grids(config, shape):
    route = route_for(config, len(shape))
    k, t = route.num_orders(len(shape)), math.prod(shape)
    y = torch.randn(2, 3, k, t).transpose(1, 2)  # arbitrary sequences, not contiguous
    torch.testing.assert_close(route.merge(y, shape), route.scatter(y, shape).sum(1))
    with pytest.raises(ValueError, match="takes sequences"):
        route.merge(y[..., :-1], shape)


def test_snake_keeps_neighbours_adjacent():
    route = get_route("snake")
    for shape in [(7,), (5, 7), (2, 13), (8, 8), (2, 3, 5), (3, 4, 4), (3, 3, 3)]:
        coords = torch.stack(torch.unravel_index(route.orders(shape), shape), -1)  # (K, T, dims)
        steps = (coords[:, 1:] - coords[:, :-1]).abs().sum(-1)
        assert torch.equal(steps, torch.ones_like(steps)), shape


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_nested_s_keeps_stripes_continuous(width):
    """Inside a stripe consecutive tokens are grid neighbours; a step between stripes (or slices) moves at
    most ``width`` positions, and there is at most one such step per stripe border."""
    route = get_route("nested_s", width=width)
    for shape in [(5, 7), (2, 13), (8, 8), (9, 4), (2, 3, 5), (3, 4, 4)]:
        coords = torch.stack(torch.unravel_index(route.orders(shape), shape), -1)  # (K, T, dims)
        steps = (coords[:, 1:] - coords[:, :-1]).abs().sum(-1)
        assert steps.min() >= 1 and steps.max() <= width, (shape, steps.max())
        borders = math.prod(shape[:-2]) * (math.ceil(max(shape[-2:]) / width) + 1)
        assert ((steps > 1).sum(-1) <= borders).all(), shape


def test_nested_s_shift_moves_the_stripe_borders():
    plain, shifted = get_route("nested_s", width=4), get_route("nested_s", width=4, shift=2)
    # 2x6, width 4: stripes of columns 0-3 and 4-5 without the shift, 0-1 and 2-5 with it.
    assert plain.orders((2, 6))[0].tolist() == [0, 1, 2, 3, 9, 8, 7, 6, 10, 11, 5, 4]
    assert shifted.orders((2, 6))[0].tolist() == [0, 1, 7, 6, 8, 9, 10, 11, 5, 4, 3, 2]


GRID_3X4 = {  # 0 1 2 3 / 4 5 6 7 / 8 9 10 11
    ("raster", ()): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]],
    ("bidirectional", ()): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],
    ("cross", ()): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11],
                    [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0], [11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0]],
    ("snake", ()): [[0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11], [0, 4, 8, 9, 5, 1, 2, 6, 10, 11, 7, 3],
                    [11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0], [3, 7, 11, 10, 6, 2, 1, 5, 9, 8, 4, 0]],
    ("local", ()): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],  # one window
    ("local", (("window", 2),)): [[0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11],
                                  [11, 10, 9, 8, 7, 6, 3, 2, 5, 4, 1, 0]],
    ("local", (("window", 3), ("reverse", False))): [[0, 1, 2, 4, 5, 6, 8, 9, 10, 3, 7, 11]],
    ("local", (("window", 2), ("column_first", True), ("reverse", False))): [[0, 4, 1, 5, 8, 9, 2, 6, 3, 7, 10, 11]],
    ("dilated", ()): [[0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 5, 7], [7, 5, 6, 4, 11, 9, 3, 1, 10, 8, 2, 0]],
    ("dilated", (("rate", 3), ("reverse", False))): [[0, 3, 1, 2, 4, 7, 5, 6, 8, 11, 9, 10]],
    ("tri_oriented", ()): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                           [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]],
    ("local_bidirectional", (("window", 4),)): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                                                [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8]],
    ("local_bidirectional", (("window", 5),)): [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                                                [4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 11, 10]],
    ("local_bidirectional", (("window", 5), ("reverse", True))): [[11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                                                                  [7, 8, 9, 10, 11, 2, 3, 4, 5, 6, 0, 1]],
}
GRID_3X4.update({  # MaIR's sscan_4d gives the same orders
    ("nested_s", (("width", 2),)): [[0, 1, 5, 4, 8, 9, 10, 11, 7, 6, 2, 3], [11, 10, 6, 7, 3, 2, 1, 0, 4, 5, 9, 8],
                                    [0, 4, 5, 1, 2, 6, 7, 3, 11, 10, 9, 8], [11, 7, 6, 10, 9, 5, 4, 8, 0, 1, 2, 3]],
    ("nested_s", (("width", 2), ("shift", 1))): [[0, 4, 8, 9, 10, 6, 5, 1, 2, 3, 7, 11],
                                                 [11, 7, 3, 2, 1, 5, 6, 10, 9, 8, 4, 0],
                                                 [0, 1, 2, 3, 7, 11, 10, 6, 5, 9, 8, 4],
                                                 [11, 10, 9, 8, 4, 0, 1, 5, 6, 2, 3, 7]],
})
VOLUME_2X2X2 = {  # slice 0: 0 1 / 2 3, slice 1: 4 5 / 6 7
    ("cross", ()): [[0, 1, 2, 3, 4, 5, 6, 7], [0, 4, 1, 5, 2, 6, 3, 7], [0, 2, 4, 6, 1, 3, 5, 7],
                    [7, 6, 5, 4, 3, 2, 1, 0], [7, 3, 6, 2, 5, 1, 4, 0], [7, 5, 3, 1, 6, 4, 2, 0]],
    ("snake", ()): [[0, 1, 3, 2, 6, 7, 5, 4], [0, 2, 3, 1, 5, 7, 6, 4],
                    [4, 5, 7, 6, 2, 3, 1, 0], [4, 6, 7, 5, 1, 3, 2, 0]],
    ("tri_oriented", ()): [[0, 1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1, 0], [0, 4, 1, 5, 2, 6, 3, 7]],
    ("local", (("window", 2), ("reverse", False))): [[0, 1, 2, 3, 4, 5, 6, 7]],
    ("local", (("window", 1), ("reverse", False))): [[0, 1, 2, 3, 4, 5, 6, 7]],
    ("nested_s", (("width", 1),)): [[0, 2, 3, 1, 5, 7, 6, 4], [7, 5, 4, 6, 2, 0, 1, 3],
                                    [0, 1, 3, 2, 6, 7, 5, 4], [7, 6, 4, 5, 1, 0, 2, 3]],
}
VOLUME_2X2X3 = {  # slice 0: 0 1 2 / 3 4 5, slice 1: 6 7 8 / 9 10 11
    ("local", (("window", 2), ("reverse", False))): [[0, 1, 3, 4, 6, 7, 9, 10, 2, 5, 8, 11]],
    ("dilated", (("rate", 2), ("reverse", False))): [[0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10]],
    ("snake", ()): [[0, 1, 2, 5, 4, 3, 9, 10, 11, 8, 7, 6], [0, 3, 4, 1, 2, 5, 11, 8, 7, 10, 9, 6],
                    [6, 7, 8, 11, 10, 9, 3, 4, 5, 2, 1, 0], [6, 9, 10, 7, 8, 11, 5, 2, 1, 4, 3, 0]],
}
LINE_7 = {
    ("cross", ()): [[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]],
    ("dilated", (("rate", 3), ("reverse", False))): [[0, 3, 6, 1, 4, 2, 5]],
    ("local_bidirectional", (("window", 3),)): [[0, 1, 2, 3, 4, 5, 6], [2, 1, 0, 5, 4, 3, 6]],
}
HAND_WORKED = [(shape, key, expected) for shape, table in [((3, 4), GRID_3X4), ((2, 2, 2), VOLUME_2X2X2),
                                                          ((2, 2, 3), VOLUME_2X2X3), ((7,), LINE_7)]
               for key, expected in table.items()]


@pytest.mark.parametrize("shape, key, expected", HAND_WORKED,
                         ids=[f"{s}-{config_id((k[0], dict(k[1])))}" for s, k, _ in HAND_WORKED])
def test_hand_worked_orders(shape, key, expected):
    assert get_route(key[0], **dict(key[1])).orders(shape).tolist() == expected


def test_orders_are_cached_per_shape_and_device():
    route = get_route("cross")
    orders = route.orders((5, 7))
    assert route.orders((5, 7)) is orders and route.orders([5, 7], "cpu") is orders
    assert route.orders((5, 7), torch.device("cpu")) is orders
    assert route.inverse_orders((5, 7)) is route.inverse_orders((5, 7))
    assert route.orders((7, 5)) is not orders
    route.gather(torch.randn(1, 2, 5, 7))
    assert route.orders((5, 7)) is orders


def test_large_grids_build():
    for name in NAMES:
        route = get_route(name)
        if 2 in route.spatial_dims:
            assert route.orders((256, 256)).shape[1] == 256 * 256
        assert route.orders((32, 48, 40)).shape[1] == 32 * 48 * 40


def test_local_bidirectional_flips_every_two_layers():
    route = LocalBidirectionalRoute(window=3)
    flipped = route.flipped()
    assert (flipped.window, flipped.alternate, flipped.reverse) == (3, True, True)
    assert torch.equal(flipped.flipped().orders((3, 4)), route.orders((3, 4)))
    assert [route.for_layer(i).reverse for i in range(8)] == [False, False, True, True] * 2
    still = LocalBidirectionalRoute(window=3, alternate=False)
    assert all(still.for_layer(i) is still for i in range(4))


@pytest.mark.parametrize("name, shape", [("local", (7,)), ("tri_oriented", (7,))] + [(n, (2, 2, 2, 2)) for n in NAMES])
def test_unsupported_dims_raise(name, shape):
    route = get_route(name)
    with pytest.raises(ValueError, match=f"scan route '{name}' supports spatial_dims in"):
        route.num_orders(len(shape))
    with pytest.raises(ValueError, match="supports spatial_dims"):
        route.gather(torch.randn(1, 1, *shape))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown scan route 'zigzag'; known routes: bidirectional, cross"):
        get_route("zigzag")
    with pytest.raises(ValueError, match="window must be a positive integer"):
        get_route("local", window=0)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        get_route("nested_s", width=0)
    with pytest.raises(ValueError, match=r"shift must be an integer in \[0, width=4\)"):
        get_route("nested_s", width=4, shift=4)
    with pytest.raises(ValueError, match="rate must be a positive integer"):
        get_route("dilated", rate=1.5)
    with pytest.raises(ValueError, match="already registered"):
        register_route("raster")(type("Again", (ScanRoute,), {}))
    route = get_route("cross")
    with pytest.raises(ValueError, match="grid sizes must be positive"):
        route.orders((0, 3))
    with pytest.raises(ValueError, match=r"batch, channels, \*spatial"):
        route.gather(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"takes sequences \(batch, 4, channels, 12\)"):
        route.scatter(torch.randn(1, 2, 3, 12), (3, 4))
