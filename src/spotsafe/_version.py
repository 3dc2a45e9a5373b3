__version__ = "0.1.0"
"""The installed spotsafe release (PEP 440), also ``spotsafe --version``."""
