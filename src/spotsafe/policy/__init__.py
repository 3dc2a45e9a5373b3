"""Policy layer: when to save, as small composable objects with an injected clock."""

from ._save import AnyOf, EveryDuration, EverySteps, Never, SavePolicy, as_policy

__all__ = ["AnyOf", "EveryDuration", "EverySteps", "Never", "SavePolicy", "as_policy"]
