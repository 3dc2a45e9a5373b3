"""Platform recipes: the configuration that runs a spot-safe job where users run spot jobs.

One module per platform, each with ``render(options) -> str`` (a ready, commented file),
registered in :data:`RECIPES` under the name ``spotsafe recipe`` takes. No torch, no
network: a recipe is text, validated offline by the tests against each platform's schema
or client.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ._options import DEFAULT_BUDGET_S, EXIT_CODE, MARGIN_S, RecipeOptions, budget_from_events

_MODULES = {
    "kubernetes": "._kubernetes",
    "skypilot": "._skypilot",
    "slurm": "._slurm",
    "sagemaker": "._sagemaker",
    "aws-batch": "._batch",
    "gcp-batch": "._batch",
}
PLATFORMS = tuple(_MODULES)


def renderer(platform: str) -> Callable[[RecipeOptions], str]:
    """The ``render`` function of ``platform``; ValueError naming the platforms there are."""
    module = _MODULES.get(platform)
    if module is None:
        raise ValueError(f"No recipe for {platform!r}; spotsafe has recipes for {', '.join(PLATFORMS)}.")
    mod = importlib.import_module(module, __name__)
    fn = getattr(mod, "render_" + platform.replace("-", "_"), None) or mod.render
    return fn


def render(platform: str, options: RecipeOptions) -> str:
    """The recipe of ``platform`` for ``options``."""
    return renderer(platform)(options)


__all__ = ["DEFAULT_BUDGET_S", "EXIT_CODE", "MARGIN_S", "PLATFORMS", "RecipeOptions", "budget_from_events", "render",
           "renderer"]
