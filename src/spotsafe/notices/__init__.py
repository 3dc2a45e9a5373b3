"""Notices layer: interruption warnings from every source, reduced to one ``Notice``.

Signal handlers only record; pollers run in daemon threads; nothing here knows about
checkpoints (the run layer decides what a notice means).
"""

from ._clouds import AWS, GCP, Azure
from ._file import FileTrigger
from ._notice import DEFAULT_GRACE, Notice, NoticeSource
from ._poller import Poller
from ._signals import Kubernetes, SageMaker, Signals, Slurm
from ._watcher import NoticeWatcher, make_sources

__all__ = [
    "AWS",
    "DEFAULT_GRACE",
    "GCP",
    "Azure",
    "FileTrigger",
    "Kubernetes",
    "Notice",
    "NoticeSource",
    "NoticeWatcher",
    "Poller",
    "SageMaker",
    "Signals",
    "Slurm",
    "make_sources",
]
