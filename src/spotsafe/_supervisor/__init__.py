"""Supervisor layer: ``spotsafe run`` starts, watches and restarts a training command (no torch)."""

from ._chaos import Chaos
from ._profile import BUILTINS, Profile, get_profile, load_profiles
from ._supervisor import Supervisor, newest_checkpoint

__all__ = ["BUILTINS", "Chaos", "Profile", "Supervisor", "get_profile", "load_profiles", "newest_checkpoint"]
