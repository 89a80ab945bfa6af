"""Receptive-field bookkeeping and Gaussian receptive-field upsampling (spec §1.2, §4)."""
from __future__ import annotations

import math
from typing import NamedTuple


class Reception(NamedTuple):
  """Receptive field of an FCDD net's output pixel (spec §1.2): extent r, jump j, start s."""
  r: int
  j: int
  s: float


def default_std(r: int) -> float:
  """σ(r) of spec §4, used when no `gauss_std` is given."""
  return math.log10(0.45 * r + 1) + 0.25 if r < 32 else 10.0
