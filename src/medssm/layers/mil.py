"""Pieces the multiple-instance-learning families share: the instance encoder of patch bags, the input
projection, attention pooling and the bag input check.

A bag is a batch of ``n`` instances: features (batch, n, d) or image patches (batch, n, C, H, W). An
*instance encoder* maps patches to features (batch, n, d'), trained end to end with the rest of the model;
feature bags (pre-extracted with a frozen network, CLAM's layout) need none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ENCODERS = ("colon_cnn",)

# Per-channel RGB mean and standard deviation of the colon set's 27x27 nucleus patches in [0, 1] (fold 0's
# 81 training bags, 18,543 patches); ColonCNN standardises its input with them by default.
COLON_MEAN = (0.750, 0.596, 0.821)
COLON_STD = (0.171, 0.194, 0.117)


class ColonCNN(nn.Module):
    """Ilse et al.'s instance encoder for 27x27 colour patches of the colon and breast cancer sets (Ilse,
    Tomczak & Welling 2018, "Attention-based Deep Multiple Instance Learning", arXiv:1802.04712, Table 10):
    conv(4x4, 36) + ReLU + max-pool 2, conv(3x3, 48) + ReLU + max-pool 2, fc-512 + ReLU + dropout.
    The paper's second fc-512 is the MIL model's input projection (:class:`InstanceProjection`).

    (batch * n, in_channels, patch_size, patch_size) -> (batch * n, 512). ``dropout``: the paper does not
    give the rate; 0.25 here (CLAM's and MambaMIL's rate).

    Patches come in [0, 1] and are standardised per channel, (x - mean) / std, before the first conv (3
    channels: ``COLON_MEAN`` / ``COLON_STD`` unless given; other channel counts: mean 0.5, std 0.5, as the
    transforms.Normalize((0.5,)*3, (0.5,)*3) of the colon loaders derived from Ilse et al.'s code). Without
    it a bag trained at the loss ln 2 for 9-16 epochs: H&E patches are bright (mean 0.6-0.8) with a small
    spread, so every patch's features were nearly the same and the bags' pooled features too.
    """

    out_features = 512

    def __init__(self, in_channels: int = 3, patch_size: int = 27, dropout: float = 0.25,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.in_channels, self.patch_size = in_channels, patch_size
        default_mean, default_std = (COLON_MEAN, COLON_STD) if in_channels == 3 else ((0.5,), (0.5,))
        for name, given in (("mean", mean if mean is not None else default_mean),
                            ("std", std if std is not None else default_std)):
            value = torch.as_tensor(given, dtype=torch.float32).flatten()
            if value.numel() not in (1, in_channels) or (name == "std" and (value <= 0).any()):
                raise ValueError(f"{name} must be one value or {in_channels} (one per channel)"
                                 f"{', all > 0' if name == 'std' else ''}, got {given}")
            # Not saved in checkpoints: the constructor arguments (the run's config) define them.
            self.register_buffer(name, value.expand(in_channels).reshape(1, -1, 1, 1).clone(), persistent=False)
        side = ((patch_size - 3) // 2 - 2) // 2  # after conv4 + pool2 + conv3 + pool2
        if side < 1:
            raise ValueError(f"patch_size must be at least 10 for ColonCNN's two convs and pools, got {patch_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 36, 4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(36, 48, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Linear(48 * side * side, self.out_features), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.patch_size, self.patch_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ColonCNN takes patches (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return self.fc(self.features((x - self.mean) / self.std).flatten(1))


def build_encoder(name: str | None, in_channels: int, patch_size: int = 27) -> tuple[nn.Module | None, int]:
    """The instance encoder ``name`` (one of ``ENCODERS``, or None for feature bags) and its output width
    (``in_channels`` without an encoder)."""
    if name is None:
        return None, in_channels
    if name == "colon_cnn":
        encoder = ColonCNN(in_channels, patch_size)
        return encoder, encoder.out_features
    raise ValueError(f"encoder must be None (feature bags) or one of {ENCODERS}, got {name!r}")


def encode_bag(x: torch.Tensor, encoder: nn.Module | None, in_channels: int) -> torch.Tensor:
    """Check a bag and return its instance features (batch, n, d): patches (batch, n, C, H, W) go through
    ``encoder``; features (batch, n, in_channels) pass as they are. ValueError names what was expected."""
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[1] < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"a bag must be (batch, n >= 1, ...), got {got}")
    if encoder is None:
        if x.dim() != 3 or x.shape[-1] != in_channels:
            hint = " (a bag of patches needs encoder='colon_cnn')" if x.dim() == 5 else ""
            raise ValueError(f"a feature bag must be (batch, n, {in_channels}), got {tuple(x.shape)}{hint}")
        return x
    if x.dim() != 5 or x.shape[2] != in_channels:
        raise ValueError(f"a bag of patches must be (batch, n, {in_channels}, H, W), got {tuple(x.shape)}")
    b, n = x.shape[:2]
    return encoder(x.flatten(0, 1)).view(b, n, -1)


class InstanceProjection(nn.Sequential):
    """Linear(in_features, dim) + ReLU + dropout: the first layer of ABMIL, TransMIL and MambaMIL on features
    (batch, n, in_features) -> (batch, n, dim)."""

    def __init__(self, in_features: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(in_features, dim), nn.ReLU(), nn.Dropout(dropout))


class AttentionPool(nn.Module):
    """Attention-based MIL pooling (Ilse et al. 2018, arXiv:1802.04712, eq. 8 and, with ``gated=True``, the
    gated attention of eq. 9): a_k = softmax_k(w^T (tanh(V h_k) [* sigmoid(U h_k)])), z = sum_k a_k h_k.

    forward(h (batch, n, dim)) -> (z (batch, dim), a (batch, n)), the weights summing to one over the bag.
    """

    def __init__(self, dim: int, attention_dim: int = 128, gated: bool = False) -> None:
        super().__init__()
        self.gated = gated
        self.V = nn.Linear(dim, attention_dim)
        self.U = nn.Linear(dim, attention_dim) if gated else None
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(self.V(h))
        if self.U is not None:
            hidden = hidden * torch.sigmoid(self.U(h))
        a = F.softmax(self.w(hidden).squeeze(-1), dim=1)  # (batch, n)
        return torch.einsum("bn,bnd->bd", a, h), a


_DEFAULTS = {"in_channels": 512, "out_channels": 2}  # the MIL model functions' defaults


def resolve_sizes(in_channels: int, out_channels: int, in_features: int | None,
                  num_classes: int | None) -> tuple[int, int]:
    """The (input width, classes) of a MIL model: ``in_features`` / ``num_classes`` are the issue's names for
    ``in_channels`` / ``out_channels`` (MONAI's, which the engine passes); giving both of a pair differently is
    a ValueError."""
    for alias, value, name, canonical in (("in_features", in_features, "in_channels", in_channels),
                                          ("num_classes", num_classes, "out_channels", out_channels)):
        if value is not None and value != canonical and canonical != _DEFAULTS[name]:
            raise ValueError(f"{alias}={value} and {name}={canonical} disagree; give one of them")
    return (in_features or in_channels), (num_classes or out_channels)


def xavier_init(*modules: nn.Module) -> None:
    """Xavier-normal weights and zero biases of the Linear layers in ``modules`` (CLAM's, TransMIL's and
    MambaMIL's initialisation), leaving everything else (Mamba's dt init) alone."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
