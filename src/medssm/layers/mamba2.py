"""The Mamba-2 mixer with mamba_ssm's parameter names, shapes and initialisation.

A state dict saved from mamba_ssm's ``Mamba2`` (without d_ssm or tensor parallelism) loads into this
class with ``strict=True``. Data flow for u (batch, L, d_model)::

    in_proj -> z (d_inner), xBC (d_inner + 2 * ngroups * d_state), dt (nheads)
    xBC -> causal depthwise conv + SiLU -> x (nheads heads of headdim), B, C (ngroups groups of d_state)
    y = ssd_chunk_scan(x, dt, A, B, C, D, dt_bias, softplus)   (A: one scalar per head)
    y = norm(y, z) = rmsnorm(y * silu(z)) * weight   (or y * silu(z) when rmsnorm=False)
    out_proj(y) -> (batch, L, d_model)

Recurrent decoding keeps conv_state (batch, conv_dim, d_conv) and ssm_state (batch, nheads, headdim,
d_state) in fp32, where conv_dim = d_inner + 2 * ngroups * d_state.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import causal_conv1d, causal_conv1d_update, selective_state_update, ssd_chunk_scan
from .mamba import RecurrentMixer, check_input, init_dt_bias, no_weight_decay
from .norm import RMSNormGated


class Mamba2(RecurrentMixer):
    """Mamba-2 (SSD) mixer: (batch, L, d_model) -> (batch, L, d_model).

    Recurrent caches: conv_state (batch, conv_dim, d_conv), ssm_state (batch, nheads, headdim, d_state).

    Args:
        d_model: model width. d_state: SSM state size N. d_conv: convolution width. expand: d_inner / d_model.
        headdim: channels per head (nheads = d_inner / headdim). ngroups: groups of B and C (divides nheads).
        A_init_range: A = -exp(A_log) with exp(A_log) drawn uniform in this range, one per head.
        D_has_hdim: D of shape (d_inner,) (per channel) instead of (nheads,).
        rmsnorm: gate through RMSNormGated (else y * silu(z)). norm_before_gate: see RMSNormGated.
        dt_min, dt_max, dt_init_floor: softplus(dt_bias) drawn log-uniform in [dt_min, dt_max], floored.
        dt_limit: (min, max) clamp on dt after the softplus.
        bias: biases in in_proj and out_proj. conv_bias: bias in conv1d.
        chunk_size: SSD chunk length.
        conv_backend: causal_conv1d backend ("auto", "torch", "cpu").
        layer_idx: this layer's index in a stack (kept for the caller's cache bookkeeping).
    """

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, A_init_range: tuple[float, float] = (1, 16), D_has_hdim: bool = False,
                 rmsnorm: bool = True, norm_before_gate: bool = False, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), bias: bool = False,
                 conv_bias: bool = True, chunk_size: int = 256, conv_backend: str = "auto",
                 layer_idx: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._set_sizes(d_model, d_state, d_conv, expand)
        self.d_inner = expand * d_model
        if self.d_inner % headdim != 0:
            raise ValueError(f"headdim={headdim} must divide d_inner = expand * d_model = {self.d_inner}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if ngroups < 1 or self.nheads % ngroups != 0:
            raise ValueError(f"ngroups={ngroups} must divide nheads={self.nheads}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")
        self.ngroups = ngroups
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.conv_backend = conv_backend
        self.layer_idx = layer_idx
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        # in_proj output order: [z, x, B, C, dt].
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, **factory))
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(self.d_inner if D_has_hdim else self.nheads, device=device))  # fp32
        no_weight_decay(self.dt_bias, self.A_log, self.D)
        if rmsnorm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups,
                                     norm_before_gate=norm_before_gate, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _D(self) -> torch.Tensor:
        """D as (nheads,) or (nheads, headdim)."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _gate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gated normalisation of y (..., d_inner) by z, when rmsnorm is on (else the op already gated)."""
        return self.norm(y, z) if self.rmsnorm else y

    def forward(self, u: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the mixer over a whole sequence: u (batch, L, d_model) -> (batch, L, d_model); with ``cache``
        the caches are left as :meth:`step` needs them to continue (see :class:`RecurrentMixer`)."""
        check_input(u, self.d_model)
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = xBC.transpose(1, 2)  # (batch, conv_dim, L)
        ssm_state = None if cache is None else self._begin_cache(cache, xBC)
        xBC = causal_conv1d(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu",
                            backend=self.conv_backend)
        x, B, C = xBC.transpose(1, 2).split([self.d_inner, self.ngroups * self.d_state,
                                             self.ngroups * self.d_state], dim=-1)
        y = ssd_chunk_scan(
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            -torch.exp(self.A_log.float()),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            chunk_size=self.chunk_size,
            D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            return_final_states=cache is not None,
            dt_limit=self.dt_limit,
        )
        if cache is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        y = self._gate(y.flatten(-2), z)
        return self.out_proj(y)

    def step(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """Decode one token, updating both caches in place.

        Args:
            u: (batch, 1, d_model).
            conv_state: (batch, conv_dim, d_conv). ssm_state: (batch, nheads, headdim, d_state).

        Returns:
            (batch, 1, d_model).
        """
        self._check_step(u, conv_state, ssm_state)
        batch = u.shape[0]
        z, xBC, dt = self.in_proj(u.squeeze(1)).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = causal_conv1d_update(xBC, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                   activation="silu")
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        # dt as the scan sees it (bias, softplus, limits) in fp32; a head's channels share its value.
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if self.dt_limit != (0.0, math.inf):
            dt = dt.clamp(min=self.dt_limit[0], max=self.dt_limit[1])
        heads = (batch, self.nheads, self.headdim)
        A = -torch.exp(self.A_log.float())
        D = self._D()
        y = selective_state_update(
            ssm_state,
            x.view(heads),
            dt[..., None].expand(heads),
            A[:, None, None].expand(self.nheads, self.headdim, self.d_state),
            B.view(batch, self.ngroups, self.d_state),
            C.view(batch, self.ngroups, self.d_state),
            D=(D if D.dim() == 2 else D[:, None]).expand(self.nheads, self.headdim),
            z=None if self.rmsnorm else z.view(heads),
        )
        y = self._gate(y.flatten(-2), z)
        return self.out_proj(y).unsqueeze(1)

    def _ssm_state_shape(self) -> tuple[int, ...]:
        return (self.nheads, self.headdim, self.d_state)
