"""Run layer: spotsafe.Run ties state, engine, policy and notices into the training loop."""

from ._run import Preempted, Run

__all__ = ["Preempted", "Run"]
