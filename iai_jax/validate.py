"""Small type checks shared by the readers, the evaluator and the config."""

from __future__ import annotations

import math
import numbers


def is_int(x) -> bool:
  """A Python int (what JSON gives), not a bool."""
  return isinstance(x, int) and not isinstance(x, bool)


def is_integral(x) -> bool:
  """An integer, Python or numpy, not a bool."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x) -> bool:
  """A finite real number (int or float, Python or numpy), not a bool."""
  return (isinstance(x, numbers.Real) and not isinstance(x, bool)
          and math.isfinite(x))
