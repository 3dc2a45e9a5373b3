"""Distributed training (``torchrun``): the layer between the engine and ``Run``.

Built so far: one agreed stop step for every rank (:class:`StopAgreement`). To come (issue 13):
one global checkpoint for the job through DCP's planners and a two-phase commit.
"""

from ._agree import DEFAULT_POLL, DEFAULT_TIMEOUT, AgreementFailed, StopAgreement

__all__ = ["DEFAULT_POLL", "DEFAULT_TIMEOUT", "AgreementFailed", "StopAgreement"]
