"""ECG Mamba: a 1D CNN stem and Mamba layers for biosignals (ECG), bidirectional or causal, with a streaming
mode of constant memory.

Structure (:class:`ECGMamba`), x (batch, in_channels, L)::

    stem: for each (channels c_i, stride s_i): conv k (stride s_i) -> LayerNorm over channels -> GELU
          -> tokens (batch, d_model = c_last, T = ceil(L / S)), S = prod(s_i) the total stride
    depth blocks, t + Mixer(RMSNorm(t)):
        causal=False: Vim's bidirectional Mamba (BiMamba, :class:`~medssm.layers.VimBlock`), along ``route``
        causal=True:  forward-only Mamba (its depthwise conv is causal)
    per-token RMSNorm -> mean over tokens -> Linear -> logits (batch, out_channels)

Causal configuration (``causal=True``): the stem's convs are left-padded by k - 1 (no look-ahead), every
norm acts on one token, and Mamba runs forwards only, so token t depends on the samples up to t * S and no
later one. The model then gives per-window logits:

    **window**: ``window`` samples (a multiple of S) = ``window / S`` consecutive tokens; window j is tokens
    [j * window / S, (j + 1) * window / S), which summarise the signal causally up to sample (j + 1) * window
    - S (and its whole past, through the Mamba state). Its logits are ``head(mean of the window's normalised
    tokens)``; :meth:`ECGMamba.window_logits` returns them for the ``T // (window / S)`` complete windows,
    (batch, windows, out_channels); a trailing partial window is left out.

Streaming (causal only, eval mode): :meth:`ECGMamba.stream` takes a long signal chunk by chunk (any chunk
sizes) and yields the logits of the windows each chunk completes, equal to :meth:`window_logits` of the whole
signal. Memory is constant: per stem conv a rolling buffer of fewer than k + stride samples, per Mamba layer
the (conv_state, ssm_state) caches of ``Mamba.step`` and a running sum for the current window
(:class:`StreamState`); each chunk's tokens go through ``Mamba.extend`` (the parallel scan continued from the
cached state, equal to one ``Mamba.step`` per token).

Not a published architecture as such: it follows the ECG-Mamba family's recipe (a convolutional stem over the
raw signal, then Mamba layers; e.g. Zhang et al. 2024's bidirectional Mamba for ECG, arXiv:2406.10098)
with Vim's bidirectional block (Zhu et al. 2024, arXiv:2401.09417) and Mamba (Gu & Dao 2023,
arXiv:2312.00752) for the causal form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Mamba, VimBlock
from ..layers.grid import check_grid
from ..layers.norm import RMSNormGated
from ..layers.token_routes import build_route, mix_along_route
from .registry import register_model


class StemConv(nn.Module):
    """conv k (stride s) -> LayerNorm over channels -> GELU: (batch, in, L) -> (batch, out, ceil(L / s)).

    Centred padding (k // 2 each side) or, with ``causal``, k - 1 zeros on the left only (output t reads the
    samples t * s - k + 1 .. t * s). :meth:`stream` continues a causal conv over a chunked signal.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, causal: bool) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or stride < 1:
            raise ValueError(f"stem kernel_size must be odd and stride positive, got {kernel_size}, {stride}")
        self.kernel_size, self.stride, self.causal = kernel_size, stride, causal
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)
        self.norm = nn.LayerNorm(out_channels)
        self.act = nn.GELU()

    def _pointwise(self, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(y.transpose(1, 2)).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.kernel_size - 1 if self.causal else self.kernel_size // 2
        right = 0 if self.causal else self.kernel_size // 2
        return self._pointwise(self.conv(F.pad(x, (left, right))))

    def initial_buffer(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The stream's starting buffer: the k - 1 zeros of the causal padding, (batch, in, k - 1)."""
        return like.new_zeros(batch, self.conv.in_channels, self.kernel_size - 1)

    def stream(self, buffer: torch.Tensor, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append chunk (batch, in, n) to the buffer; return the outputs it completes (batch, out, m) and the
        new buffer (the inputs not yet consumed, fewer than k + stride - 1)."""
        buffer = torch.cat((buffer, chunk), dim=-1)
        k, s = self.kernel_size, self.stride
        count = (buffer.shape[-1] - k) // s + 1 if buffer.shape[-1] >= k else 0
        out = self._pointwise(self.conv(buffer[..., :(count - 1) * s + k])) if count else buffer.new_zeros(
            buffer.shape[0], self.conv.out_channels, 0)
        return out, buffer[..., count * s:]


class CausalMambaBlock(nn.Module):
    """t + Mamba(RMSNorm(t)) on tokens (batch, T, dim), forward only; :meth:`step` decodes one token."""

    def __init__(self, dim: int, d_state: int, d_conv: int, expand: float, scan_backend: str, ssm: bool) -> None:
        super().__init__()
        self.norm = RMSNormGated(dim)
        self.mixer = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend, ssm=ssm)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.mixer(self.norm(t))

    def step(self, t: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """t (batch, 1, dim) -> (batch, 1, dim), advancing ``cache`` (Mamba's conv_state, ssm_state) in place."""
        return t + self.mixer.step(self.norm(t), *cache)

    def extend(self, t: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """t (batch, T, dim) -> (batch, T, dim): T calls of :meth:`step` at once (``Mamba.extend``)."""
        return t + self.mixer.extend(self.norm(t), *cache)


@dataclass
class StreamState:
    """Everything :meth:`ECGMamba.stream_step` keeps between chunks; its size does not grow with the signal.

    ``buffers``: per stem conv, the inputs not yet consumed (batch, channels, < k + stride). ``caches``: per
    Mamba layer, (conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state)). ``window_sum``
    (batch, d_model) and ``window_tokens``: the current window's running sum of normalised tokens and count.
    ``window``: samples per window; ``tokens_per_window`` = window / total stride.
    """

    window: int
    tokens_per_window: int
    buffers: list[torch.Tensor]
    caches: list[tuple[torch.Tensor, torch.Tensor]]
    window_sum: torch.Tensor
    window_tokens: int = 0
    windows_done: int = field(default=0)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor held, for memory accounting."""
        return [*self.buffers, *(t for cache in self.caches for t in cache), self.window_sum]


class ECGMamba(nn.Module):
    """ECG Mamba: (batch, in_channels, L) -> logits (batch, out_channels), any L (see the module docstring).

    Args:
        spatial_dims: 1 (signals only). in_channels: leads. out_channels: classes.
        stem_channels, stem_strides: channels and stride of each stem conv; d_model = stem_channels[-1].
        kernel_size: the stem convs' kernel (odd). depth: Mamba blocks. d_state, d_conv, expand: the mixers'.
        causal: forward-only Mamba and causal convs (per-window logits, streaming); else bidirectional.
        route: the token order(s) of the bidirectional blocks (default "raster"; causal needs "raster").
        dropout: before the head. scan_backend: selective_scan backend. ssm: False removes the selective scans.
    """

    def __init__(self, spatial_dims: int = 1, in_channels: int = 1, out_channels: int = 2,
                 stem_channels: Sequence[int] = (16, 32, 64), stem_strides: Sequence[int] = (2, 2, 2),
                 kernel_size: int = 7, depth: int = 4, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 causal: bool = False, route: str = "raster", dropout: float = 0.0, scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        if spatial_dims != 1:
            raise ValueError(f"ECGMamba is for signals: spatial_dims must be 1, got {spatial_dims}")
        if not stem_channels or len(stem_channels) != len(stem_strides):
            raise ValueError(f"stem_channels and stem_strides need one entry per stem conv, got "
                             f"{tuple(stem_channels)}, {tuple(stem_strides)}")
        if causal and route != "raster":
            raise ValueError(f"a causal ECGMamba reads tokens in time order only: route must be 'raster', "
                             f"got {route!r}")
        self.in_channels, self.causal = in_channels, causal
        self.d_model = stem_channels[-1]
        self.stride = int(torch.tensor(tuple(stem_strides)).prod())
        widths = (in_channels, *stem_channels)
        self.stem = nn.ModuleList(StemConv(widths[i], widths[i + 1], kernel_size, s, causal)
                                  for i, s in enumerate(stem_strides))
        self.route = build_route(route, 1)
        if causal:
            self.blocks = nn.ModuleList(CausalMambaBlock(self.d_model, d_state, d_conv, expand, scan_backend, ssm)
                                        for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(VimBlock(1, self.d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                                                 scan_backend=scan_backend, ssm=ssm) for _ in range(depth))
        self.norm_f = RMSNormGated(self.d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.d_model, out_channels)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, in_channels, L) -> normalised final tokens (batch, T, d_model), T = ceil(L / stride)."""
        check_grid(x, 1, self.in_channels)
        for conv in self.stem:
            x = conv(x)
        if self.causal:
            t = x.transpose(1, 2)
            for block in self.blocks:
                t = block(t)
        else:
            for block in self.blocks:
                x = mix_along_route(lambda s, b=block: b(s.transpose(1, 2)).transpose(1, 2), x, self.route)
            t = x.transpose(1, 2)
        return self.norm_f(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, L) -> logits (batch, out_channels), pooled over all tokens."""
        return self.head(self.dropout(self.tokens(x).mean(1)))

    def check_window(self, window: int) -> int:
        """Tokens per window of ``window`` samples (ValueError unless a positive multiple of the stride)."""
        if window < self.stride or window % self.stride:
            raise ValueError(f"window must be a positive multiple of the stem's stride {self.stride} samples, "
                             f"got {window}")
        return window // self.stride

    def window_logits(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """Per-window logits of the causal model (see the module docstring): x (batch, in_channels, L) ->
        (batch, T // (window / stride), out_channels)."""
        self._check_causal("window_logits")
        per = self.check_window(window)
        t = self.tokens(x)
        count = t.shape[1] // per
        return self.head(t[:, :count * per].reshape(t.shape[0], count, per, -1).mean(2))

    def init_stream(self, window: int, batch_size: int = 1) -> StreamState:
        """A fresh :class:`StreamState` for ``batch_size`` signals and windows of ``window`` samples."""
        self._check_causal("streaming")
        like = self.head.weight
        return StreamState(window=window, tokens_per_window=self.check_window(window),
                           buffers=[conv.initial_buffer(batch_size, like) for conv in self.stem],
                           caches=[block.mixer.allocate_inference_cache(batch_size) for block in self.blocks],
                           window_sum=like.new_zeros(batch_size, self.d_model))

    @torch.no_grad()
    def stream_step(self, state: StreamState, chunk: torch.Tensor) -> torch.Tensor:
        """Feed chunk (batch, in_channels, n >= 0); return the logits of the windows it completes
        (batch, windows, out_channels) (often 0 windows), updating ``state`` in place."""
        if self.training:
            raise RuntimeError("stream in eval mode (model.eval()): dropout and drop path differ in training")
        check_grid(chunk, 1, self.in_channels)
        x = chunk.to(state.window_sum.dtype)
        for i, conv in enumerate(self.stem):
            x, state.buffers[i] = conv.stream(state.buffers[i], x)
        t = x.transpose(1, 2)  # (batch, m, d_model): the tokens this chunk completes
        for block, cache in zip(self.blocks, state.caches, strict=True):
            t = block.extend(t, cache)
        t = self.norm_f(t)
        done, start = [], 0
        while start < t.shape[1]:  # split the chunk's tokens at window boundaries
            take = min(state.tokens_per_window - state.window_tokens, t.shape[1] - start)
            state.window_sum += t[:, start:start + take].sum(1)
            state.window_tokens += take
            start += take
            if state.window_tokens == state.tokens_per_window:
                done.append(self.head(state.window_sum / state.window_tokens))
                state.window_sum.zero_()
                state.window_tokens = 0
                state.windows_done += 1
        if not done:
            return x.new_zeros(x.shape[0], 0, self.head.out_features)
        return torch.stack(done, dim=1)

    def stream(self, chunks: Iterable[torch.Tensor], window: int) -> Iterator[torch.Tensor]:
        """Stream chunks (batch, in_channels, n_i) of one long signal; yield each chunk's completed windows'
        logits (batch, windows, out_channels). Their concatenation equals :meth:`window_logits` of the whole
        signal (to fp32 rounding)."""
        state = None
        for chunk in chunks:
            if state is None:
                state = self.init_stream(window, chunk.shape[0])
            yield self.stream_step(state, chunk)

    def _check_causal(self, what: str) -> None:
        if not self.causal:
            raise ValueError(f"{what} needs the causal configuration (causal=True): bidirectional Mamba reads "
                             "the future")


@register_model("classification", spatial_dims=(1,), input_size={1: (256,)})
def ecg_mamba(spatial_dims: int = 1, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """ECG Mamba: 1D conv stem + bidirectional (or causal, streamable) Mamba layers, mean-pooled head."""
    return ECGMamba(spatial_dims, in_channels, out_channels, **kwargs)
