"""`medssm bench mixer`: where a multi-route vision Mamba mixer spends its time.

For a 2D 64x64 and a 3D 32x32x32 input it times the whole mixer forward, the routing alone (gather along
the K routes + scatter/merge back, the same calls the mixer makes) and the selective scan alone (one grouped
call on the mixer's sequence shapes), and reports routing's share of the mixer's time.
"""

from __future__ import annotations

import torch

from ..layers.vision_mamba import MultiRouteMamba
from ..ops import selective_scan
from .scan import median_time

DEFAULT_CASES = (("2d", (64, 64)), ("3d", (32, 32, 32)))


def bench_case(spatial: tuple[int, ...], route: str, d_model: int, d_state: int, batch: int,
               repeats: int) -> dict:
    mixer = MultiRouteMamba(len(spatial), d_model, d_state=d_state, route=route).eval()
    x = torch.randn(batch, d_model, *spatial)
    K, d_inner = mixer.num_routes, mixer.d_inner
    grid = torch.randn(batch, d_inner, *spatial)
    seqs = mixer.route.gather(grid)
    T = seqs.shape[-1]
    u = torch.randn(batch, K * d_inner, T)
    delta = torch.randn(batch, K * d_inner, T)
    A = -torch.exp(mixer.A_logs.detach())
    B, C = torch.randn(batch, K, d_state, T), torch.randn(batch, K, d_state, T)
    with torch.no_grad():
        total = median_time(lambda: mixer(x), repeats)
        routing = median_time(lambda: mixer.route.merge(mixer.route.gather(grid), spatial), repeats)
        bias = mixer.dt_projs_bias.reshape(-1)
        scan = median_time(lambda: selective_scan(u, delta, A, B, C, mixer.Ds, delta_bias=bias, delta_softplus=True),
                           repeats)
    return {"spatial": spatial, "route": route, "K": K, "tokens": T, "mixer_ms": total * 1e3,
            "routing_ms": routing * 1e3, "scan_ms": scan * 1e3, "routing_share": routing / total}


def run(route: str = "cross", d_model: int = 48, d_state: int = 16, batch: int = 1, repeats: int = 10,
        threads: int | None = None) -> list[dict]:
    """Print a Markdown table of mixer / routing / scan times for the default 2D and 3D cases."""
    if threads:
        torch.set_num_threads(threads)
    print(f"medssm bench mixer: route {route!r}, d_model {d_model}, d_state {d_state}, batch {batch}, "
          f"{torch.get_num_threads()} threads")
    rows = [bench_case(spatial, route, d_model, d_state, batch, repeats) for _, spatial in DEFAULT_CASES]
    print("| input | K | tokens | mixer ms | routing ms (gather + merge) | scan ms | routing share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'x'.join(map(str, r['spatial']))} | {r['K']} | {r['tokens']} | {r['mixer_ms']:.2f} | "
              f"{r['routing_ms']:.2f} | {r['scan_ms']:.2f} | {100 * r['routing_share']:.1f}% |")
    return rows
