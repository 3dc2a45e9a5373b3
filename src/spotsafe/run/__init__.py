"""Run layer: spotsafe.Run ties state, engine, policy and notices into the training loop."""

from ._run import Preempted, RootLocked, Run

__all__ = ["Preempted", "RootLocked", "Run"]
