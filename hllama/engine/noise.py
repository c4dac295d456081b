"""The randomness of sampling: ``q ~ Exp(1)`` as a hash of (seed, step, token).

A draw is the Gumbel race ``argmax(log p - log q)``. Hashing each token's ``q`` instead of taking numbers
from a generator in turn makes it the same whichever tokens are looked at and in whatever order, so a
batch can compute it for its candidates only, and a seed gives the same answer alone, in a batch, or
through ``generate``. splitmix64 does the mixing.
"""

from __future__ import annotations

import secrets

import torch

_MASK64 = 2**64 - 1


def seed_of(seed: int | None) -> int:
    """A request's seed as the draws use it: ``None`` or -1 (llama.cpp's and Ollama's "random") is a fresh one,
    any other integer is taken modulo 2**64."""
    return seed % 2**64 if seed not in (None, -1) else secrets.randbits(63)


def step_key(seed: int, step: int) -> int:
    """The key of one step of one seed's draws (a signed 64-bit integer, as int64 tensors hold it)."""
    return _signed(_splitmix(seed ^ _splitmix(step)))


def exponential(keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``q ~ Exp(1)`` for each of ``tokens`` (``[rows, n]``), under each row's key (``[rows, 1]``, int64)."""
    mixed = _mix(tokens * _GOLDEN + keys)
    uniform = (((mixed >> 11) & (2**53 - 1)).double() + 0.5) * 2.0**-53  # in (0, 1), never 0
    return -uniform.log().float()


def _signed(value: int) -> int:
    value &= _MASK64
    return value - 2**64 if value >= 2**63 else value


def _splitmix(value: int) -> int:
    """splitmix64's output function (Python integers), for the per-step keys."""
    value = (value * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function over int64 tensors (which wrap on overflow; shifts made logical by masks)."""
    x = (x ^ ((x >> 30) & (2**34 - 1))) * _MIX1
    x = (x ^ ((x >> 27) & (2**37 - 1))) * _MIX2
    return x ^ ((x >> 31) & (2**33 - 1))
