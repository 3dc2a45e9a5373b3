"""Which committed checkpoints of one store to delete after a save, under a retention policy.

The rules are pure and live in :mod:`spotsafe.policy._retention`; this module feeds them the
steps committed in a store and, only when the policy has a time-based rule, each
checkpoint's creation time from its manifest, so the default policies cost nothing beyond
the listing the prune needs anyway.

Creation times are remembered per step, so a remote is not asked for every manifest after
every upload. The just-committed step is always read afresh: a step that is saved again
(an invalid checkpoint replaced) is the committed one of its own prune, so no stale time
survives. A manifest that cannot be read counts as created now and its checkpoint is kept;
a later prune reads it again.
"""

from __future__ import annotations

import logging
import time

from ..format import committed_steps, read_manifest, step_dir
from ..policy._retention import RetentionPolicy, select_deletions

logger = logging.getLogger(__name__)


class StoreRetention:
    """A retention policy applied to the committed checkpoints of one store.

    Called from one thread at a time: the manager's persist thread for the run root, the
    upload thread for the remote.
    """

    def __init__(self, storage, policy: RetentionPolicy) -> None:
        self.storage = storage
        self.policy = policy
        self._created: dict[int, float] = {}

    def deletions(self, committed: int) -> list[int]:
        """Committed steps to delete, oldest first, now that ``committed`` is committed."""
        steps = committed_steps(self.storage)
        if not self.policy.needs_times:
            return select_deletions(self.policy, [(s, 0.0) for s in steps], committed)
        listed = set(steps)
        self._created = {s: t for s, t in self._created.items() if s in listed and s != committed}
        unreadable = set()
        for s in steps:
            if s <= committed and s not in self._created:
                try:
                    self._created[s] = read_manifest(self.storage, step_dir(s)).created
                except Exception as e:  # noqa: BLE001 - kept, and read again by the next prune
                    unreadable.add(s)
                    logger.info("Keeping %s in %s: its manifest cannot be read for its creation time (%s)",
                                step_dir(s), self.storage.url, e)
        now = time.time()
        checkpoints = [(s, self._created.get(s, now)) for s in steps]
        return [s for s in select_deletions(self.policy, checkpoints, committed) if s not in unreadable]
