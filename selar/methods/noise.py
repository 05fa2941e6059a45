"""Per-row randomness of the methods: uniforms hashed from (row seed, step, column, stream), so a
row's noise depends only on its own seed and step, never on the other rows of the batch or their
order. The sampler (selar.sampling) draws the emitted token from stream 0; a method that needs its
own noise (Gumbel, Dirichlet, extra samples) takes another stream, so it is independent of that
draw. Everything is vectorised over the batch (no per-row loop, no host sync).
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

_M64 = (1 << 64) - 1


def _i64(x: int) -> int:
    x &= _M64
    return x - (1 << 64) if x >= 1 << 63 else x


_C1, _C2, _C3 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)
_GOLD_STEP = _i64(0xD1B54A32D192ED03)
_STREAM = _i64(0xA0761D6478BD642F)

# the streams of the methods' noise (0 is the sampler's draw of the emitted token)
SOFT_THINKING_NOISE, MULTIPLEX_SAMPLES = 1, 2

# Marsaglia-Tsang attempts per Gamma variate (each accepts with probability > 0.95)
GAMMA_ATTEMPTS = 8


def _srl(x: Tensor, n: int) -> Tensor:
    """Logical right shift of int64 values."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def hash_uniform(seeds: Tensor, steps: Union[int, Tensor], n: int, stream: int = 0) -> Tensor:
    """(B, n) float64 uniforms in (0, 1) from a splitmix64 hash of (seed, step, column, stream);
    `steps` is an int or a (B,) tensor (rows that joined later have their own step counts)."""
    cols = torch.arange(n, dtype=torch.long, device=seeds.device)
    steps_t = torch.as_tensor(steps, dtype=torch.long, device=seeds.device).expand(seeds.shape[0])
    x = seeds[:, None] * _C1 + (steps_t[:, None] + 1) * _GOLD_STEP + cols[None, :] * _C3 + _C2
    if stream:
        x = x + _i64(stream * _STREAM)
    x = (x ^ _srl(x, 30)) * _C2
    x = (x ^ _srl(x, 27)) * _C3
    x = x ^ _srl(x, 31)
    return (_srl(x, 40).double() + 0.5) / float(1 << 24)


def gumbel(u: Tensor) -> Tensor:
    """Standard Gumbel noise from uniforms."""
    return -torch.log(-torch.log(u))


def log_gamma_draws(shape: Tensor, u: Tensor) -> Tensor:
    """log of Gamma(shape, 1) draws (float64), shape (B, K) >= 0, from uniforms u (B, K, 3A + 1),
    A = GAMMA_ATTEMPTS. Marsaglia-Tsang on shape + 1 (Box-Muller normals), the first accepted of
    A attempts (none accepted, probability < 1e-10: its mean d), then the boost
    G(a) = G(a + 1) U^(1/a). Shape 0 gives -inf (weight 0)."""
    a = shape.double()
    d = (a + 1.0 - 1.0 / 3.0)[..., None]
    c = 1.0 / torch.sqrt(9.0 * d)
    att = u[..., :-1].reshape(*u.shape[:-1], GAMMA_ATTEMPTS, 3)
    x = torch.sqrt(-2.0 * torch.log(att[..., 0])) * torch.cos(2.0 * math.pi * att[..., 1])
    v = (1.0 + c * x) ** 3
    log_v = torch.log(v.clamp_min(1e-300))
    ok = (v > 0) & (torch.log(att[..., 2]) < 0.5 * x * x + d - d * v + d * log_v)
    first = torch.where(ok.any(-1), ok.long().argmax(-1), -1)
    v_acc = torch.where(first >= 0, v.gather(-1, first.clamp_min(0)[..., None])[..., 0], 1.0)
    log_g = torch.log(d[..., 0] * v_acc) + torch.log(u[..., -1]) / a
    return torch.where(a > 0, log_g, torch.full_like(log_g, float("-inf")))


def dirichlet_weights(concentration: Tensor, seeds: Tensor, steps: Tensor, stream: int) -> Tensor:
    """(B, K) float64 draws of Dirichlet(concentration) per row (0 where the concentration is 0)."""
    b, k = concentration.shape
    u = hash_uniform(seeds, steps, k * (3 * GAMMA_ATTEMPTS + 1), stream).view(b, k, -1)
    return torch.softmax(log_gamma_draws(concentration, u), dim=-1)
