"""Rotary position embedding tables, including Llama-3's frequency scaling.

The engine precomputes one fp32 table [max_positions, head_dim]: cos of the head_dim/2 frequencies
in the first half, sin in the second. Kernels index it by position, so prefill, chunked prefill and
decode all rotate with exactly the same numbers. Frequencies follow transformers' formulas so the
logits match theirs.
"""
from __future__ import annotations

import math

import torch


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    rtype = scaling["rope_type"]
    if rtype == "linear":
        return inv_freq / float(scaling["factor"])
    if rtype == "llama3":
        return _llama3_scale(inv_freq, scaling)
    raise ValueError(f"unsupported rope_type {rtype!r}")


def _llama3_scale(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1+: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between."""
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def cos_sin_table(head_dim: int, max_positions: int, theta: float, scaling: dict | None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    inv_freq = inverse_frequencies(head_dim, theta, scaling)
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)
