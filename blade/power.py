"""Statistical power of a paired comparison: the smallest difference a test could have detected.

A verdict "no significant difference" means little without the effect the test could have seen.
:func:`paired_mde` is the minimum detectable difference of a two-sided paired t-test: the mean
per-unit difference that the test rejects with probability ``power`` at level ``alpha``, given
the differences' standard deviation and count. It solves the noncentral-t power equation
(statsmodels ``TTestPower``, the one-sample/paired t-test) for Cohen's ``d_z`` and returns
``d_z · sd``, in the metric's own units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.80


def mde_from_sd(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """MDE of a two-sided paired t-test over ``n`` pairs whose differences have std ``sd``
    (NaN when it cannot be computed: n < 2 or a non-finite sd; 0 when sd is 0)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    from statsmodels.stats.power import TTestPower

    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.asarray(d).reshape(-1)[0]) * sd


def paired_mde(a: Sequence[float], b: Sequence[float] | None = None, alpha: float = ALPHA,
               power: float = POWER) -> float:
    """MDE of the paired comparison of ``a`` with ``b`` (per-unit values, NaN pairs dropped), or
    of the differences ``a`` themselves when ``b`` is None."""
    d = np.asarray(a, dtype=float) if b is None else np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    return mde_from_sd(float(d.std(ddof=1)) if len(d) > 1 else math.nan, len(d), alpha, power)
