"""rope: rotary position embeddings, in the rotate-half form of Llama and Qwen3.

Instead of adding a position vector to the token embedding, RoPE rotates each query and key by
angles proportional to its position. Pair channel i with channel i + D/2 (i < D/2) and turn the
pair by the angle p * f_i at position p:

    y_i       = x_i cos(p f_i) - x_{i+D/2} sin(p f_i)
    y_{i+D/2} = x_{i+D/2} cos(p f_i) + x_i sin(p f_i)

Written over the whole vector this is y = x * cos + rotate_half(x) * sin, with
rotate_half(x) = concat(-x[D/2:], x[:D/2]) and the angle table laid out as concat(a, a),
a_i = p f_i: the layout of Hugging Face's Llama and Qwen3 checkpoints (the original RoFormer
paper pairs neighbouring channels 2i, 2i+1 instead; the two are the same up to a permutation
of the projection's columns, but a checkpoint only works with the one it was trained with).

Why it encodes position: a rotation preserves dot products between vectors turned by the same
angle, so q_p . k_s depends on the positions only through p - s: each pair contributes
|q_pair| |k_pair| cos(angle between the two pairs + (p - s) f_i). Scores become relative.

The frequencies f_i = theta^(-2i/D) run geometrically from 1 radian per position down to
about 1/theta; `rope_frequencies` also applies Llama 3's stretching of the slow ones.

Shapes: x (..., T, D) with positions on the second-last axis, usually (B, H, T, D) heads;
the angle tables cos, sin are (T, D/2).
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor
from .graph import record


class RopeConfigError(ValueError):
    """A RoPE setting we do not implement, or one with missing or impossible values."""


def rope_frequencies(head_dim: int, theta: float = 10000.0,
                     scaling: dict | None = None) -> np.ndarray:
    """The D/2 rotation frequencies f_i (radians per position), float32, fastest first.

        f_i = theta^(-2i / D),   i = 0 .. D/2 - 1

    `scaling` is a Hugging Face `rope_scaling` / `rope_parameters` dict (its "rope_type", or
    the older key "type"); None, "default" mean none. Supported:

    "linear" (`factor`): every f_i / factor, i.e. positions squeezed by the factor.

    "llama3" (`factor`, `low_freq_factor`, `high_freq_factor`,
    `original_max_position_embeddings` L), Llama 3.1's context extension. Each frequency has a
    wavelength w_i = 2 pi / f_i (positions per full turn). Frequencies that turn many times
    within the original context are left alone; those whose wavelength is longer than the
    context (never seen to wrap around in training) are slowed down by `factor`; in between,
    the two are blended linearly in L / w_i:
        w_i < L / high_freq_factor:   f_i                          (high frequencies)
        w_i > L / low_freq_factor:    f_i / factor                 (low frequencies)
        otherwise, s = (L / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor):
                                      (1 - s) f_i / factor + s f_i
    s runs from 0 at w_i = L / low_freq_factor to 1 at w_i = L / high_freq_factor, so the
    blend meets both outer cases. Computed in float64, rounded once to float32.
    """
    if head_dim <= 0 or head_dim % 2:
        raise RopeConfigError(f"rope: head_dim must be a positive even number, got {head_dim}")
    if not theta > 0:
        raise RopeConfigError(f"rope: theta must be positive, got {theta}")
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim      # 2i / D
    freqs = theta ** -exponents                                               # (D/2,) float64
    rope_type = None
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type in (None, "default"):
        pass
    elif rope_type == "linear":
        freqs = freqs / _positive(scaling, "factor")
    elif rope_type == "llama3":
        freqs = _llama3_frequencies(freqs, scaling)
    else:
        raise RopeConfigError(f"rope: rope_type {rope_type!r} is not supported (supported: "
                              f"'default', 'linear', 'llama3')")
    return freqs.astype(np.float32)


def _positive(scaling: dict, key: str) -> float:
    value = scaling.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RopeConfigError(f"rope: scaling needs a positive number {key!r}, got {value!r}")
    return float(value)


def _llama3_frequencies(freqs: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3's per-frequency scaling (formula in `rope_frequencies`), in float64."""
    factor = _positive(scaling, "factor")
    low = _positive(scaling, "low_freq_factor")
    high = _positive(scaling, "high_freq_factor")
    context = _positive(scaling, "original_max_position_embeddings")
    if not high > low:
        raise RopeConfigError(f"rope: llama3 scaling needs high_freq_factor ({high}) > "
                              f"low_freq_factor ({low})")
    wavelength = 2 * math.pi / freqs
    blend = (context / wavelength - low) / (high - low)
    blended = (1 - blend) * freqs / factor + blend * freqs
    return np.where(wavelength < context / high, freqs,
                    np.where(wavelength > context / low, freqs / factor, blended))


_table_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def rope_tables(freqs: np.ndarray, start: int, n_positions: int,
                dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the angles p * f_i for positions p = start .. start + n_positions - 1:
    two read-only (T, D/2) arrays of `dtype`, cached (training asks for the same ones every step).

    The angle p * f_i is a float32 product, as in Hugging Face's and Meta's code, so at large
    positions the rotation is the one these checkpoints were trained and evaluated with
    (float32 rounds a large angle by up to half a unit in its last place); cos and sin of that
    angle are then taken in float64 and rounded to `dtype`.
    """
    freqs = np.asarray(freqs, dtype=np.float32)
    key = (freqs.tobytes(), int(start), int(n_positions), np.dtype(dtype))
    tables = _table_cache.get(key)
    if tables is None:
        if len(_table_cache) > 64:            # decoding asks for a new start every token
            _table_cache.clear()
        positions = np.arange(start, start + n_positions, dtype=np.float32)
        angles = np.multiply.outer(positions, freqs).astype(np.float64)     # (T, D/2)
        cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
        cos.setflags(write=False)
        sin.setflags(write=False)
        tables = _table_cache[key] = (cos, sin)
    return tables


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """y = x * cos + rotate_half(x) * sin for x (..., T, D), cos and sin (T, D/2):
    each pair (x1, x2) = (x_i, x_{i+D/2}) turned by its angle,

        y1 = x1 cos - x2 sin
        y2 = x2 cos + x1 sin

    computed on the two halves (views), with one (..., T, D/2) scratch array.
    """
    return _rotate_pairs(x, cos, sin, inverse=False)


def rope_backward(d_y: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """dL/dx from g = dL/dy: the gradient turned back by the same angles.

    For one pair at one position the forward is y = R x with the rotation
        R = [[cos, -sin],          y1 = x1 cos - x2 sin
             [sin,  cos]]          y2 = x1 sin + x2 cos
    It is linear in x, so dL/dx = R^T g:
        dL/dx1 = g1 cos + g2 sin
        dL/dx2 = -g1 sin + g2 cos
    and R^T = R^-1 is the rotation by the opposite angle (cos is even, sin is odd). Nothing
    from the forward is needed but the angle tables.
    """
    return _rotate_pairs(d_y, cos, sin, inverse=True)


def _rotate_pairs(x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                  inverse: bool) -> np.ndarray:
    """Turn each pair (x_i, x_{i+D/2}) by +angle, or by -angle if `inverse`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = np.empty(x.shape, dtype=x.dtype)
    y1, y2 = y[..., :half], y[..., half:]
    scratch = np.empty(x1.shape, dtype=x.dtype)                # (..., T, D/2)
    np.multiply(x1, cos, out=y1)
    np.multiply(x2, sin, out=scratch)
    if inverse:
        y1 += scratch                                          # x1 cos + x2 sin
    else:
        y1 -= scratch                                          # x1 cos - x2 sin
    np.multiply(x2, cos, out=y2)
    np.multiply(x1, sin, out=scratch)
    if inverse:
        y2 -= scratch                                          # x2 cos - x1 sin
    else:
        y2 += scratch                                          # x2 cos + x1 sin
    return y


def rope(x: Tensor, start: int = 0, theta: float = 10000.0,
         freqs: np.ndarray | None = None) -> Tensor:
    """Rotary position embedding of x (..., T, D) at positions start .. start + T - 1.

    `freqs` (D/2,) from `rope_frequencies` (e.g. with Llama 3's scaling); by default the plain
    frequencies for `theta`. With a KV cache, the new tokens' queries and keys are rotated at
    `start` = the number of cached positions, exactly as they would be in a full pass.
    The math: `rope_forward`, `rope_backward`.
    """
    if x.ndim < 2:
        raise ValueError(f"rope: input must be (..., T, D), got shape {x.shape}")
    n_positions, head_dim = x.shape[-2], x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rope: the last axis (head size) must be even, got shape {x.shape}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"rope: start must be a non-negative integer position, got {start!r}")
    if freqs is None:
        freqs = rope_frequencies(head_dim, theta)
    if np.shape(freqs) != (head_dim // 2,):
        raise ValueError(f"rope: freqs has shape {np.shape(freqs)}, expected ({head_dim // 2},) "
                         f"for head size {head_dim}")
    cos, sin = rope_tables(freqs, start, n_positions, x.dtype)        # (T, D/2) each
    y = rope_forward(x.data, cos, sin)
    return record(y, (x,), lambda d_y: (rope_backward(d_y, cos, sin),), "rope")
