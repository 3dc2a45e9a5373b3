"""The Hugging Face Trainer, spot-safe: ``spotsafe.hf.attach(trainer, run)``.

Imported only by its users (``import spotsafe`` does not import it, nor transformers).
"""

from ._attach import attach
from ._callback import SpotSafeCallback

__all__ = ["SpotSafeCallback", "attach"]
