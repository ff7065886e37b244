"""Weight SVD and spatial SVD: factorisation (`factor`, pure numpy), the schemes
(`scheme`), data-aware second moments (`moments`) and the sequential refit (`refit`)."""
from .scheme import SPATIAL_SVD, WEIGHT_SVD, RankPlan, SvdScheme, apply_plans

__all__ = ["SPATIAL_SVD", "WEIGHT_SVD", "RankPlan", "SvdScheme", "apply_plans"]
