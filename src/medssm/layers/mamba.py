"""The Mamba (v1) mixer with mamba_ssm's parameter names, shapes and initialisation.

A state dict saved from mamba_ssm's ``Mamba`` loads into this class with ``strict=True`` (and back).
Data flow for x (batch, L, d_model)::

    in_proj -> x, z (d_inner each)
    x -> causal depthwise conv + SiLU -> x_proj -> dt (dt_rank), B, C (d_state each)
    dt -> dt_proj (its bias is added inside the scan, with softplus)
    y = selective_scan(x, dt, A, B, C, D, z)
    out_proj(y) -> (batch, L, d_model)

With ``ssm=False`` the selective scan and its parameters (x_proj, dt_proj, A_log, D) are left out:
y = (causal depthwise conv + SiLU)(x) * silu(z), MambaOut's gated CNN (Yu & Wang 2024), the control that
answers "does the SSM help?" for any network built from this mixer.

Recurrent decoding keeps two caches per layer: conv_state (batch, d_inner, d_conv), the last d_conv
inputs of the convolution, and ssm_state (batch, d_inner, d_state) in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update


def init_dt_bias(size: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None,
                 dtype=None) -> torch.Tensor:
    """A dt bias whose softplus is log-uniform in [dt_min, dt_max], floored at dt_init_floor: (size,)."""
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(size, device=device, dtype=dtype) * (log_max - log_min) + log_min)
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # the inverse of softplus


def last_window(x: torch.Tensor, width: int) -> torch.Tensor:
    """The last ``width`` positions of x (..., L), left-padded with zeros when L < width: (..., width)."""
    if x.shape[-1] >= width:
        return x[..., x.shape[-1] - width:]
    return F.pad(x, (width - x.shape[-1], 0))


def check_cache(conv_state: torch.Tensor, ssm_state: torch.Tensor, conv_shape: tuple[int, ...],
                ssm_shape: tuple[int, ...]) -> None:
    """Raise ValueError unless the caches have the expected shapes."""
    for name, t, shape in (("conv_state", conv_state, conv_shape), ("ssm_state", ssm_state, ssm_shape)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape {shape} (see allocate_inference_cache), got {got}")


def check_input(x: torch.Tensor, d_model: int) -> None:
    """Raise ValueError unless x is (batch, L, d_model) with L >= 1."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d_model or x.shape[1] < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (batch, L, d_model) = (batch, L >= 1, {d_model}), got {got}")


def s4d_real_A_log(channels: int, d_state: int, device=None) -> torch.Tensor:
    """S4D-real initialisation of A_log in fp32, A[c, n] = -(n + 1): log(1..d_state) per channel, (channels,
    d_state)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(channels, 1))


def no_weight_decay(*params: nn.Parameter) -> None:
    """Mark parameters (A_log, D, dt biases) for optimisers that skip weight decay on them (mamba_ssm's flag)."""
    for p in params:
        p._no_weight_decay = True


class RecurrentMixer(nn.Module):
    """The recurrent-decoding cache protocol shared by :class:`Mamba` and :class:`~medssm.layers.Mamba2`.

    ``forward(x, cache)`` with cache = (conv_state, ssm_state) from :meth:`allocate_inference_cache` overwrites
    both with the states after the last token (the scan starts from zero), so that ``step`` continues the
    sequence one token at a time.

    A subclass has ``d_model``, ``d_conv``, the depthwise ``conv1d`` whose last ``d_conv`` inputs are cached
    (conv_state (batch, conv channels, d_conv)) and :meth:`_ssm_state_shape` (ssm_state (batch, ...), fp32).
    """

    d_model: int
    d_conv: int
    conv1d: nn.Conv1d

    def _ssm_state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _set_sizes(self, d_model: int, d_state: int, d_conv: int, expand: float) -> None:
        """Record the sizes both mixers share (d_inner is the subclass's: Mamba rounds, Mamba-2 needs heads)."""
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand

    def _check_cache(self, conv_state: torch.Tensor, ssm_state: torch.Tensor, batch: int) -> None:
        check_cache(conv_state, ssm_state, (batch, self.conv1d.in_channels, self.d_conv),
                    (batch, *self._ssm_state_shape()))

    def _begin_cache(self, cache: tuple[torch.Tensor, torch.Tensor], conv_input: torch.Tensor) -> torch.Tensor:
        """Check ``cache`` for a sequence whose conv input is conv_input (batch, conv channels, L), store its
        last d_conv inputs in conv_state and return ssm_state (for the caller to fill with the last state)."""
        conv_state, ssm_state = cache
        self._check_cache(conv_state, ssm_state, conv_input.shape[0])
        conv_state.copy_(last_window(conv_input, self.d_conv))
        return ssm_state

    def _check_step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        """Raise ValueError unless x is one token (batch, 1, d_model) and the caches fit its batch."""
        check_input(x, self.d_model)
        if x.shape[1] != 1:
            raise ValueError(f"step decodes one token at a time: x must be (batch, 1, {self.d_model}), "
                             f"got {tuple(x.shape)}")
        self._check_cache(conv_state, ssm_state, x.shape[0])

    def allocate_inference_cache(self, batch_size: int,
                                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed caches: conv_state (batch, conv channels, d_conv) in ``dtype`` (default: the conv weight's)
        and ssm_state (batch, *ssm state shape) in fp32 (see the subclass's docstring for the shapes)."""
        device = self.conv1d.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv1d.in_channels, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, *self._ssm_state_shape(), device=device, dtype=torch.float32)
        return conv_state, ssm_state


class Mamba(RecurrentMixer):
    """Mamba (S6) mixer: (batch, L, d_model) -> (batch, L, d_model).

    Recurrent caches: conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state).

    Args:
        d_model: model width. d_state: SSM state size N. d_conv: convolution width. expand: d_inner / d_model.
        dt_rank: rank of the dt projection; "auto" means ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: softplus(dt_proj.bias) is drawn log-uniform in [dt_min, dt_max],
            floored at dt_init_floor.
        dt_init: "random" (uniform) or "constant" init of dt_proj.weight, at scale dt_scale / sqrt(dt_rank).
        conv_bias: bias in conv1d. bias: biases in in_proj and out_proj.
        scan_backend: selective_scan backend ("auto", "reference", "torch", "cpu").
        conv_backend: causal_conv1d backend ("auto", "torch", "cpu").
        layer_idx: this layer's index in a stack (kept for the caller's cache bookkeeping).
        ssm: False leaves the selective scan and its parameters out (the gated-CNN control, see above).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, scan_backend: str = "auto",
                 conv_backend: str = "auto", layer_idx: int | None = None, ssm: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._set_sizes(d_model, d_state, d_conv, expand)
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.scan_backend = scan_backend
        self.conv_backend = conv_backend
        self.layer_idx = layer_idx
        self.ssm = ssm

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **factory)
        if ssm:
            self._init_ssm(dt_min, dt_max, dt_init, dt_scale, dt_init_floor, factory)
        else:
            self.x_proj = self.dt_proj = self.A_log = self.D = None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _init_ssm(self, dt_min: float, dt_max: float, dt_init: str, dt_scale: float, dt_init_floor: float,
                  factory: dict) -> None:
        """The scan's parameters: x_proj, dt_proj (mamba_ssm's dt initialisation), A_log (S4D-real), D."""
        d_state, device = self.d_state, factory["device"]
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        dt_init_std = dt_scale / math.sqrt(self.dt_rank)
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, **factory))
        self.dt_proj.bias._no_reinit = True  # a model-wide init that zeroes Linear biases must skip this one

        self.A_log = nn.Parameter(s4d_real_A_log(self.d_inner, d_state, device))  # fp32
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # fp32
        no_weight_decay(self.A_log, self.D)

    def forward(self, x: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the mixer over a whole sequence: x (batch, L, d_model) -> (batch, L, d_model); with ``cache``
        the caches are left as :meth:`step` needs them to continue (see :class:`RecurrentMixer`)."""
        check_input(x, self.d_model)
        xz = self.in_proj(x).transpose(1, 2)  # (batch, 2 * d_inner, L)
        x_in, z = xz.chunk(2, dim=1)
        ssm_state = None if cache is None else self._begin_cache(cache, x_in)
        y = self.scan_branch(x_in, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D,
                             return_last_state=cache is not None)
        if cache is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def scan_branch(self, x: torch.Tensor, z: torch.Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
                    A_log: torch.Tensor, D: torch.Tensor, return_last_state: bool = False):
        """One scan direction on x and gate z (batch, d_inner, L): causal conv + SiLU, x_proj, dt_proj, gated
        selective scan -> (batch, d_inner, L) (and the last state); the parameters are passed so that
        bidirectional variants (Vim's ``*_b`` branch) reuse it. Without the SSM: silu(conv(x)) * silu(z) (and a
        zero last state)."""
        u = causal_conv1d(x, conv1d.weight.squeeze(1), conv1d.bias, activation="silu", backend=self.conv_backend)
        if not self.ssm:
            y = u * F.silu(z)
            if return_last_state:
                return y, u.new_zeros(u.shape[0], self.d_inner, self.d_state, dtype=torch.float32)
            return y
        # Under mixed precision the projections feeding the scan and the scan itself stay in fp32: a half-
        # precision delta or scan output is where NaN/Inf appear (VMamba#138, U-Mamba#8).
        with torch.autocast(u.device.type, enabled=False):
            u = u.to(x_proj.weight.dtype)  # fp32 weights under autocast; a module cast to bf16 stays bf16
            dt, B, C = x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = (dt @ dt_proj.weight.t()).transpose(1, 2)  # (batch, d_inner, L); the bias is added in the scan
            return selective_scan(u, dt, -torch.exp(A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
                                  D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True,
                                  return_last_state=return_last_state, backend=self.scan_backend)

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """Decode one token, updating both caches in place.

        Args:
            x: (batch, 1, d_model).
            conv_state: (batch, d_inner, d_conv). ssm_state: (batch, d_inner, d_state).

        Returns:
            (batch, 1, d_model).
        """
        self._check_step(x, conv_state, ssm_state)
        x_in, z = self.in_proj(x.squeeze(1)).chunk(2, dim=-1)  # (batch, d_inner) each
        u = causal_conv1d_update(x_in, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                 activation="silu")
        if not self.ssm:
            return self.out_proj(u * F.silu(z)).unsqueeze(1)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt @ self.dt_proj.weight.t()  # (batch, d_inner)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(ssm_state, u, dt, A, B, C, self.D, z=z, dt_bias=self.dt_proj.bias,
                                   dt_softplus=True)
        return self.out_proj(y).unsqueeze(1)

    @torch.no_grad()
    def extend(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
               max_chunk: int = 256) -> torch.Tensor:
        """Continue a cached sequence by a chunk of tokens at once, updating both caches in place: the same
        outputs and caches as ``x.shape[1]`` calls of :meth:`step` (to fp32 rounding), at the cost of the
        parallel scan instead of one Python step per token (inference only).

        The scan runs from a zero state and the cached state's contribution is added in closed form,
        y_t += <C_t, exp(A * sum_{s<=t} delta_s) h0>; chunks longer than ``max_chunk`` tokens are split so
        that memory does not grow with the chunk (the closed form holds (batch, d_inner, max_chunk, d_state)).

        Args:
            x: (batch, T, d_model), T >= 0.
            conv_state: (batch, d_inner, d_conv). ssm_state: (batch, d_inner, d_state).

        Returns:
            (batch, T, d_model).
        """
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be positive, got {max_chunk}")
        if x.dim() == 3 and x.shape[1] == 0 and x.shape[2] == self.d_model:
            return x.clone()  # an empty chunk changes nothing
        check_input(x, self.d_model)
        self._check_cache(conv_state, ssm_state, x.shape[0])
        return torch.cat([self._extend_chunk(part, conv_state, ssm_state) for part in x.split(max_chunk, dim=1)],
                         dim=1)

    def _extend_chunk(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        x_in, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, T) each
        # conv_state holds the d_conv inputs before this chunk; step's window for token j ends at token j.
        window = torch.cat((conv_state.to(x_in.dtype), x_in), dim=-1)
        conv_state.copy_(window[..., -self.d_conv:])
        u = F.silu(F.conv1d(window[..., 1:], self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))
        if not self.ssm:
            return self.out_proj((u * F.silu(z)).transpose(1, 2))
        u = u.float()
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (batch, d_inner, T)
        A = -torch.exp(self.A_log.float())
        B, C = B.transpose(1, 2).float(), C.transpose(1, 2).float()  # (batch, d_state, T)
        y, last = selective_scan(u, dt, A, B, C, self.D.float(), delta_bias=self.dt_proj.bias.float(),
                                 delta_softplus=True, return_last_state=True, backend=self.scan_backend)
        delta = F.softplus(dt.float() + self.dt_proj.bias.float()[:, None])
        decay = torch.exp(delta.cumsum(-1)[..., None] * A[:, None, :])  # (batch, d_inner, T, d_state)
        carried = decay * ssm_state[:, :, None, :]
        y = y + torch.einsum("bdtn,bnt->bdt", carried, C)
        ssm_state.copy_(last + carried[:, :, -1])
        return self.out_proj((y * F.silu(z.float())).to(x.dtype).transpose(1, 2))

    def _ssm_state_shape(self) -> tuple[int, ...]:
        return (self.d_inner, self.d_state)
