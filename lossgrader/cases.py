"""Test cases: the inputs a check feeds to a student's function.

Cases are generated on the CPU from a seeded generator (so a check gives the same
score on every run and on every device), cached, and copied to the grading device for
each check. A case knows which of its inputs are differentiated and, at points where
the loss is not differentiable, which range of subgradients is acceptable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class SubgradientRange:
    """At the elements where ``mask`` is true any gradient in [lo, hi] is valid."""
    mask: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


@dataclass
class Case:
    name: str                       # Chinese description shown in the feedback
    args: tuple                     # positional inputs, in the student's signature order
    kwargs: dict = field(default_factory=dict)
    grad_args: tuple = ()           # indices of args whose gradients are checked
    value_only: bool = False        # only the value is graded (e.g. BCE at p = 0 or 1)
    subgrad: dict = field(default_factory=dict)   # arg index -> SubgradientRange
    tags: frozenset = frozenset()   # "large", "noncontiguous", "edge", "float64" ...
    init_kwargs: Optional[dict] = None  # nn.Module exercises: constructor arguments

    def describe_inputs(self) -> str:
        parts = []
        for a in self.args:
            if isinstance(a, torch.Tensor):
                s = f"{tuple(a.shape)} {str(a.dtype).replace('torch.', '')}"
                if not a.is_contiguous():
                    s += " 非连续"
                parts.append(s)
        return ", ".join(parts)

    def float_dtype(self) -> torch.dtype:
        for a in self.args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return a.dtype
        return torch.get_default_dtype()

    def materialize(self, device) -> tuple:
        """Fresh copies of the inputs on ``device`` (strides kept), differentiated
        inputs as leaves requiring grad."""
        args = []
        for i, a in enumerate(self.args):
            if isinstance(a, torch.Tensor):
                a = a.to(device, copy=True)
                if i in self.grad_args:
                    a.requires_grad_(True)
            args.append(a)
        kwargs = {k: (v.to(device, copy=True) if isinstance(v, torch.Tensor) else v)
                  for k, v in self.kwargs.items()}
        return tuple(args), kwargs


class Rand:
    """Seeded input factory (CPU)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, *shape, dtype=torch.float32, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=self.g, dtype=torch.float64).mul(scale).add(shift).to(dtype)

    def uniform(self, *shape, low=0.0, high=1.0, dtype=torch.float32):
        return (torch.rand(*shape, generator=self.g, dtype=torch.float64) * (high - low) + low).to(dtype)

    def integers(self, high, *shape):
        return torch.randint(0, high, shape, generator=self.g, dtype=torch.int64)

    def labels01(self, *shape, dtype=torch.float32):
        return torch.randint(0, 2, shape, generator=self.g).to(dtype)

    def noncontiguous(self, rows, cols, dtype=torch.float32, scale=1.0):
        """A (rows, cols) tensor that is a transposed view: .view(-1) fails on it."""
        return self.normal(cols, rows, dtype=dtype, scale=scale).t()


CaseFactory = Callable[[Rand, bool], list]
