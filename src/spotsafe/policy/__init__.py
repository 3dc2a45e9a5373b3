"""Policy layer: when to save, as small composable objects with an injected clock; interval math."""

from ._interval import (
    Plan,
    advisor_mtbf,
    break_even_mtbf,
    daly_interval,
    expected_wall_time,
    hybrid,
    plan,
    simulate,
    young_interval,
)
from ._save import (
    AnyOf,
    EveryDuration,
    EverySteps,
    LostWorkBudget,
    Never,
    OnNotice,
    Optimal,
    OverheadBudget,
    SavePolicy,
    as_policy,
)

__all__ = [
    "AnyOf",
    "EveryDuration",
    "EverySteps",
    "LostWorkBudget",
    "Never",
    "OnNotice",
    "Optimal",
    "OverheadBudget",
    "Plan",
    "SavePolicy",
    "advisor_mtbf",
    "as_policy",
    "break_even_mtbf",
    "daly_interval",
    "expected_wall_time",
    "hybrid",
    "plan",
    "simulate",
    "young_interval",
]
