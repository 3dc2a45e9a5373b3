"""spotsafe for Hugging Face Accelerate: ``save_state``/``load_state`` named by step, committed and verified.

Imported only by its users (``pip install spotsafe[accelerate]``); ``import spotsafe`` does
not import Accelerate. See :func:`load_state` for the loop it fits.
"""

from ._state import load_state, save_state

__all__ = ["load_state", "save_state"]
