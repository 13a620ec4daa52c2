"""Alignment: reference rollouts, target-CDF estimators (static / nig / dp), the objective interface
and its registry, BLADE's objective, and the one loop every method runs in.

Import from the submodules (``blade.align.objective``, ``blade.align.estimators``, …): this
package imports nothing itself, so that ``blade.align.config`` stays torch-free.
"""
