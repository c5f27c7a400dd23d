"""Selective-scan operators: one public entry point per op, several backends behind it.

This package imports nothing from the rest of medssm.
"""

from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .scan_reference import selective_scan_reference
from .selective_scan import available_backends, count_scan_flops, resolve_backend, selective_scan
from .ssd import ssd_chunk_scan, ssd_reference
from .state_update import selective_state_update

__all__ = [
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_update",
    "count_scan_flops",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_state_update",
    "ssd_chunk_scan",
    "ssd_reference",
]
