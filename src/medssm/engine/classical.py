"""Classical (non-learned) restoration methods, run through the same evaluation as the networks.

``bm3d``: BM3D (Dabov et al. 2007, "Image Denoising by Sparse 3-D Transform-Domain Collaborative Filtering",
IEEE TIP 16(8)) through the ``bm3d`` package (Mäkinen et al.'s reference implementation), both stages. Its one
parameter, the noise level sigma, is estimated from each noisy image by a stated rule, so no checkpoint and
no training data are needed:

1. the image (8-bit scale v = 255 x) is mapped to a variance-stabilising domain: ``"log"`` (y = log(1 + v):
   OCT speckle is multiplicative, so it becomes additive), ``"sqrt"`` (y = 2 sqrt(v + 3/8), Anscombe's
   transform) or ``"linear"`` (y = v), then scaled to [0, 1] by its own minimum and maximum;
2. sigma = ``sigma_scale`` * the median absolute deviation of the finest-scale diagonal wavelet coefficients
   (Daubechies-2, PyWavelets) / 0.6745: Donoho & Johnstone's (1994) robust noise estimate, the one
   scikit-image's ``estimate_sigma`` uses;
3. BM3D with that sigma, then the inverse map (algebraic) back to [0, 1].

The defaults are the method's two fitted hyper-parameters, chosen by whole-frame PSNR against
``clean_average`` on two Duke OCT subjects (01 and 05; tuning images, so report means with and without them):
``domain="linear"`` (subject 01 at sigma_scale 1: log 21.24 dB, sqrt 25.05, linear 27.28; the algebraic
inverse of the log maps the denoised log-mean to the geometric mean, a bias towards dark) and
``sigma_scale=3.0`` (linear; mean of the two: 1.25 28.00, 1.5 28.11, 2.0 28.21, 2.5 28.27, 3.0 28.30,
4.0 28.28 dB). The MAD rule underestimates the speckle (spatially correlated noise barely shows in the
finest wavelet scale) and the averaged reference is smoother than a single frame, so the best sigma is about
three times the estimate. :class:`BM3DDenoiser` wraps it as a parameter-free
``nn.Module`` (batch, C, H, W) -> same shape, so ``engine.inference.infer`` runs it like a network (on the
CPU, image by image, channel by channel; never by sliding windows: BM3D needs the whole image).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

DOMAINS = ("linear", "sqrt", "log")
PEAK = 255.0  # the 8-bit scale the domains are defined on


def mad_sigma(image: np.ndarray) -> float:
    """Donoho's noise estimate of a 2D image: median(|finest diagonal Daubechies-2 coefficients|) / 0.6745."""
    import pywt

    if image.ndim != 2:
        raise ValueError(f"mad_sigma takes a 2D image, got shape {image.shape}")
    _, (_, _, diagonal) = pywt.dwt2(image, "db2")
    return float(np.median(np.abs(diagonal)) / 0.6745)


def to_domain(x: np.ndarray, domain: str) -> np.ndarray:
    """[0, 1] intensities -> the variance-stabilised values of ``domain`` (on the 8-bit scale)."""
    v = np.clip(x, 0.0, None) * PEAK
    if domain == "log":
        return np.log1p(v)
    if domain == "sqrt":
        return 2.0 * np.sqrt(v + 0.375)
    if domain == "linear":
        return v
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def from_domain(y: np.ndarray, domain: str) -> np.ndarray:
    """The algebraic inverse of :func:`to_domain`, back to [0, 1] intensities (clipped at 0)."""
    if domain == "log":
        v = np.expm1(y)
    elif domain == "sqrt":
        v = (y / 2.0) ** 2 - 0.375
    elif domain == "linear":
        v = y
    else:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return np.clip(v, 0.0, None) / PEAK


def bm3d_denoise(image: np.ndarray, domain: str = "linear", sigma_scale: float = 3.0) -> tuple[np.ndarray, float]:
    """BM3D of one 2D image in [0, 1] (see the module docstring): (denoised image in [0, 1], the sigma used,
    in units of the normalised domain)."""
    import bm3d

    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    y = to_domain(np.asarray(image, dtype=np.float64), domain)
    low, span = float(y.min()), float(np.ptp(y))
    if span == 0:
        return np.asarray(image, dtype=np.float64).copy(), 0.0  # a constant image has no noise to remove
    normalised = (y - low) / span
    sigma = sigma_scale * mad_sigma(normalised)
    if sigma <= 0:
        return np.asarray(image, dtype=np.float64).copy(), 0.0
    denoised = bm3d.bm3d(normalised, sigma_psd=sigma, stage_arg=bm3d.BM3DStages.ALL_STAGES)
    return from_domain(np.asarray(denoised) * span + low, domain), sigma


class BM3DDenoiser(nn.Module):
    """BM3D as a parameter-free module: (batch, C, H, W) in [0, 1] -> (batch, C, H, W), each image and channel
    denoised on its own with its own estimated sigma (:func:`bm3d_denoise`). ``last_sigmas`` holds the
    sigmas of the last call. Runs on the CPU (tensors on another device are copied)."""

    def __init__(self, domain: str = "linear", sigma_scale: float = 3.0) -> None:
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if sigma_scale <= 0:
            raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
        self.domain, self.sigma_scale = domain, float(sigma_scale)
        self.last_sigmas: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, C, H, W) in [0, 1] -> (batch, C, H, W)."""
        if x.dim() != 4:
            raise ValueError(f"bm3d takes 2D images (batch, C, H, W), got shape {tuple(x.shape)}")
        array = x.detach().float().cpu().numpy()
        out = np.empty_like(array)
        self.last_sigmas = []
        for index in np.ndindex(*array.shape[:2]):
            out[index], sigma = bm3d_denoise(array[index], self.domain, self.sigma_scale)
            self.last_sigmas.append(sigma)
        return torch.from_numpy(out).to(x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"domain={self.domain!r}, sigma_scale={self.sigma_scale}"


CLASSICAL_METHODS = {"bm3d": BM3DDenoiser}


def build_classical(name: str, args: dict[str, Any] | None = None) -> nn.Module:
    """The classical method ``name`` (a key of CLASSICAL_METHODS) built with ``args``."""
    if name not in CLASSICAL_METHODS:
        raise ValueError(f"unknown classical method {name!r}; known: {', '.join(CLASSICAL_METHODS)}")
    try:
        return CLASSICAL_METHODS[name](**(args or {}))
    except TypeError as error:
        raise ValueError(f"bad arguments for {name}: {error}") from error
