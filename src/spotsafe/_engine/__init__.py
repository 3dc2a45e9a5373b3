"""Engine layer: the save pipeline, verified restore, retention, replication to a remote.

Threads
-------

Every thread a :class:`CheckpointManager` uses, what it does, what it may touch, and how
its failure reaches the caller. A failure on a background thread is stored in a
:class:`~._threads.BackgroundErrors` and raised, once, by the caller's next ``save()``,
``wait()`` or ``close()`` (``close()`` raises the first left and adds the others to it as
notes; each is also logged when it happens). No failure is only logged.

========================  =====================================================  ===================================
thread                    does, and may touch                                    a failure reaches the caller as
========================  =====================================================  ===================================
caller (the loop)         every public method; the only thread that reads the    raised in place
                          user's objects (``stage``) or writes them (restore)
``spotsafe-persist``      one save at a time: writes ``step-N.tmp-*`` from the   ``SaveFailedError`` naming the step
(1, niced)                staging buffers (the caller does not stage again       and the newest checkpoint left
                          until it is done), commits, records retention          (``LeaseLostError`` as it is);
                          verdicts, renames old steps aside, queues the gc and   a failed prune is a
                          the upload, sets ``last_save`` / ``durable_saves``     ``DeletionFailedError``, not a
                                                                                 failed save
``spotsafe-hash`` (1)     checksums what persist writes, while it writes         raised inside persist's call
``spotsafe-gc`` (1)       deletes the ``step-N.trash-*`` dirs persist renamed    ``DeletionFailedError`` naming the
                          aside; nothing else                                    directory; training goes on
``spotsafe-upload``       uploads committed steps in order (reads local step     ``RemoteError`` once the retries
(daemon, niced)           dirs only through ``open_member``, writes the          run out (raised by ``wait(remote=
                          remote), applies the remote's retention, tells local   True)`` / ``wait_uploaded`` too);
                          retention of a local copy that fails verification      ``DeletionFailedError`` for a remote
                                                                                 deletion refused for good (a
                                                                                 transient one is retried after the
                                                                                 next upload)
``spotsafe-io`` (4)       parallel reads of one restore; the caller waits        raised by ``restore`` itself
fsspec's IO loop, S3      run inside one storage call of the thread that made    raised by that call
part reads                it (upload parts, ranged GETs)
``spotsafe-lease``        renews the remote writer lease every ``renew_every``;  lost to another writer: every later
(daemon)                  touches the lease object only                          write, ``wait()`` and ``close()``
                                                                                 raise ``LeaseLostError`` (a state,
                                                                                 not an event: raised each time);
                                                                                 a failed renewal is logged and
                                                                                 retried
``spotsafe-lease-         deletes the lease at ``close()``, waited for at most   logged: the lease expires by itself
release``                 10 s (1 s with ``wait_remote=False``)
========================  =====================================================  ===================================

Not failures, and so not raised: an upload dropped because newer steps queued behind it
(``dropped_uploads`` and a log line) and a local copy that fails verification on its way up
(a log line; ``wait(remote=True)`` on that step raises ``CorruptCheckpointError``), and a
failed sweep of the multipart uploads dead writers left (housekeeping the upload thread does
once its queue is first idle: a warning). The notice pollers belong to :mod:`spotsafe.notices` and never call the engine.

Thread-safety of ``CheckpointManager``
--------------------------------------

* One thread calls its methods, one call at a time: usually the training loop. The manager
  takes no lock on the caller's side; two threads calling ``save``, ``restore``, ``wait``
  or ``close`` at once is not supported (``Run`` makes every call from the loop's thread).
* From a signal handler: nothing. A handler sets a flag (:mod:`spotsafe.notices` does
  this) and the loop then calls ``save`` / ``wait``.
* From any other thread, concurrently: reading ``remote_watermark``, ``dropped_uploads``,
  ``uploads``, ``upload_pending()``, ``upload_backlog()``, ``staging_bytes``,
  ``last_save`` and ``skipped_saves``, and ``list(durable_saves)``. ``wait_uploaded()`` also
  works from another thread, but it raises (and so takes) a stored upload failure that the
  loop would otherwise see.
* ``close()`` comes last, from the calling thread, after the others returned; it joins
  every thread above but the daemon ones, which it stops.
"""

from ._manager import CheckpointManager, SaveStats
from ._options import CheckpointOptions
from ._replicate import UploadStats
from ._restore_stats import RestoreStats

__all__ = ["CheckpointManager", "CheckpointOptions", "RestoreStats", "SaveStats", "UploadStats"]
