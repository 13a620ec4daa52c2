"""Alignment: target-CDF estimators (static / nig / dp) and the objective interface with BLADE."""

from blade.align.estimators import (
    ESTIMATORS,
    DPEstimator,
    Estimator,
    EvidenceBuffer,
    NIGEstimator,
    RefPrior,
    StaticEstimator,
    make_estimator,
    nig_posterior,
    ref_cdf,
)
from blade.align.objective import (
    OBJECTIVES,
    BladeConfig,
    BladeObjective,
    Objective,
    RolloutBatch,
    bon_diagnostics,
    bon_weights,
    build_objective,
    k3_kl,
    register,
)

__all__ = [
    "ESTIMATORS", "DPEstimator", "Estimator", "EvidenceBuffer", "NIGEstimator", "RefPrior", "StaticEstimator",
    "make_estimator", "nig_posterior", "ref_cdf",
    "OBJECTIVES", "BladeConfig", "BladeObjective", "Objective", "RolloutBatch", "bon_diagnostics", "bon_weights",
    "build_objective", "k3_kl", "register",
]
