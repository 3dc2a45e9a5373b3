"""Option types shared by the commands: numbers that must be finite, steps that must fit a name."""

from __future__ import annotations

import math

import click

from .._format._layout import MAX_STEP


class Finite(click.FloatRange):
    """A float that is finite and within a range: ``nan``, ``inf`` and ``1e999`` are usage errors.

    click's own ``FloatRange`` lets NaN through (every comparison with it is false).
    """

    name = "number"

    def convert(self, value, param, ctx):  # type: ignore[override]
        x = super().convert(value, param, ctx)  # parses, then checks the range
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number; give a plain number such as 1.5.", param, ctx)
        return x


STEP = click.IntRange(0, MAX_STEP)
"""A training step that a checkpoint can hold (``step-000000001500``): 0 to 999999999999."""
