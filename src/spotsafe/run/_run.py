"""spotsafe.Run: the training-loop integration of state, engine, policy and notices.

The loop asks one question per step (``step_done``): is a checkpoint due, and has a
notice arrived? Both answers are cheap reads; every wait happens on background threads
except on the emergency path, which by then is the only thing left to do.

The emergency path, after the step that was running when the notice came:

1. checkpoint that step (or reuse the checkpoint of it already taken or in flight);
2. wait until it is durable locally, bounded by the deadline less ``margin``;
3. with a remote: estimate the upload from the measured bandwidth and the backlog; when it
   fits the time left, wait for it (a second signal or the deadline stops the wait);
4. acknowledge the notice (Azure lets the eviction proceed), record the events, log which
   tier holds the checkpoint, and exit 75 (:data:`spotsafe.EXIT_PREEMPTED`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import statistics
import time
from collections.abc import Callable, Collection, Iterator
from datetime import timedelta
from typing import Any, TypeVar, Unpack

from .._dist import AgreementFailed, StopAgreement
from .._dist._collective import distributed as _distributed
from .._dist._collective import from_rank0 as _from_writer
from .._engine import CheckpointManager, CheckpointOptions, SaveStats
from .._engine._options import ManagerSettings, options_from
from .._env import EVENTS_DIR_ENV, REMOTE_ENV, ROOT_ENV, SAVE_EVERY_ENV, SUPERVISED_ENV, SUPERVISOR_ID_ENV
from .._exitcodes import EXIT_OK, EXIT_PREEMPTED, EXIT_ROOT_LOCKED
from .._format import step_dir
from .._names import Event, SaveReason, StopReason, Tier
from .._platforms import detect as detect_platform
from .._platforms import say_once
from .._state._lr import LR_SCALING, scale_learning_rates
from .._storage import LocalFiles, Storage, is_url
from .._telemetry import EventLog, events_dir_of, measure, read_events
from .._telemetry._identity import open_event_log
from .._telemetry._mirror import EventMirror
from .._units import format_duration, parse_duration, parse_interval
from ..errors import RootLockedError
from ..notices import DEFAULT_GRACE, Notice, NoticeWatcher, make_sources
from ..notices._watcher import NoticesSpec
from ..policy import SavePolicy, as_policy

MIRROR_EVERY_S = 30.0

_T = TypeVar("_T")

logger = logging.getLogger("spotsafe.run")

_SLICE = 0.1  # seconds between looks at a second signal while waiting on the emergency path


class Preempted(SystemExit):
    """Raised out of the training loop after a notice once the checkpoint is durable; exits 75."""

    def __init__(self, notice: Notice, step: int, tier: Tier | None) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.notice, self.step, self.tier = notice, step, tier


class RootLocked(SystemExit):
    """Raised by a supervised ``Run`` that another writer's lock refused: exits 6, so that
    ``spotsafe run`` stops instead of restarting into the same refusal (the sentence naming
    the holder is logged first; ``__cause__`` is the :class:`RootLockedError`)."""

    def __init__(self) -> None:
        super().__init__(EXIT_ROOT_LOCKED)


def _check_manager(manager: CheckpointManager, root: str | os.PathLike | None, *, given: list[str]) -> str:
    """The root of a ready ``manager`` handed to ``Run``, after the checks that it can be used as given."""
    if given:
        raise ValueError(f"Run got a ready manager and also {', '.join(f'{k}=' for k in given)}; set those on the "
                         "CheckpointManager, or pass the settings without a manager.")
    if manager.read_only:
        raise ValueError(f"Run writes checkpoints, and {manager!r} is read-only; pass a manager opened without "
                         "read_only=True.")
    if root is not None and not _same_root(os.fspath(root), manager.root):
        raise ValueError(f"Run got root={os.fspath(root)!r} and a manager of {manager.root}; pass root=None with "
                         "a manager, or the manager of that root.")
    return manager.root


def _make_manager(root: str, *, options: CheckpointOptions, run_id: str, attempt: int) -> CheckpointManager:
    """The manager of this process: one for the whole job when it is one rank of several."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world > 1 or os.environ.get("TORCHELASTIC_RUN_ID"):
        import torch.distributed as dist

        # under torchrun, one rank too (an elastic job that shrank, or will grow): the job's format
        if dist.is_available() and dist.is_initialized():
            from .._dist._global import GlobalCheckpointManager  # imports DCP: only for a torchrun job

            return GlobalCheckpointManager(root, options=options, run_id=run_id, attempt=attempt)
    if world > 1:
        logger.warning("WORLD_SIZE is %d but torch.distributed is not initialised: this process checkpoints on its "
                       "own; call torch.distributed.init_process_group() before entering Run for one checkpoint "
                       "of the whole job.", world)
    return CheckpointManager(root, options=options, run_id=run_id, attempt=attempt)


def _other_rank() -> bool:
    """Whether the environment says this process is one rank of several, and not rank 0.

    With ``WORLD_SIZE`` above 1: ``RANK`` (torchrun, ``env://``) when set, else a local and a
    node rank (Lightning's own launcher, which starts ``LOCAL_RANK=1..`` children). Else SLURM's
    task id when ``srun`` started several tasks. A process none of them names is rank 0, so a
    lone process always writes, whatever stray ``RANK`` or ``LOCAL_RANK`` its environment has.
    """
    env = os.environ
    if int(env.get("WORLD_SIZE") or 1) > 1:  # a job of several processes that says so
        if env.get("RANK"):
            return int(env["RANK"]) != 0
        local, node = env.get("LOCAL_RANK"), env.get("NODE_RANK") or env.get("GROUP_RANK")
        if local or node:
            return int(local or 0) != 0 or int(node or 0) != 0
    if env.get("SLURM_PROCID") and int(env.get("SLURM_NTASKS") or 1) > 1:
        return int(env["SLURM_PROCID"]) != 0
    return False


def _framework_manager(root: str, *, options: CheckpointOptions, run_id: str, attempt: int) -> CheckpointManager:
    """The manager of a run whose framework saves its state (``Run(root, None)``): the framework
    writes its checkpoint from one rank (rank 0) and loads it on every rank, so rank 0 writes
    and the others open the root read-only (no lock: they only read). The framework saves its
    own RNG state, so the manager adds none (``rng=False``)."""
    options = dataclasses.replace(options, rng=False)
    if _other_rank():
        return CheckpointManager(root, options=dataclasses.replace(options, read_only=True), run_id=run_id,
                                 attempt=attempt)
    return CheckpointManager(root, options=options, run_id=run_id, attempt=attempt)


def _torchrun_agent() -> int | None:
    """The pid of the torchrun agent that started this worker (its parent), or None when the
    parent is no torchrun (or this is no torchrun worker)."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return ppid if ppid > 1 and ("torchrun" in cmd or "torch.distributed.run" in cmd) else None


def _entered(part: _T | None) -> _T:
    """A part that ``Run.__enter__`` makes (the manager, the watcher, the event log), once it is made."""
    if part is None:
        raise RuntimeError("This Run is not entered; use it as `with spotsafe.Run(root, state) as run:`.")
    return part


def _same_root(a: str, b: str) -> bool:
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


class Run:
    """Restore, checkpoint by policy, watch for notices, and exit safely on one.

    Args:
        root: Local directory (or URL) of the run's checkpoints, as for CheckpointManager; None
            takes ``$SPOTSAFE_ROOT`` (set by ``spotsafe run --root``).
        state: Dict of name -> object with ``state_dict()``/``load_state_dict()`` or plain value. None
            when a framework saves and loads the state (``spotsafe.lightning``, ``spotsafe.hf``,
            ``spotsafe.accelerate``): entering then restores nothing, :meth:`resume_path` names the
            checkpoint for the framework to load, the integration's saver (:meth:`use_saver`)
            makes each checkpoint, and only rank 0 writes (the other ranks read).
        save_every: Steps (``500``, ``"500steps"``), a duration (``"15m"``, ``"2h"``, float
            seconds, a timedelta), a :class:`~spotsafe.policy.SavePolicy`, or None:
            ``$SPOTSAFE_SAVE_EVERY`` when set (by a ``spotsafe run`` profile), else only on
            notices and at the end.
        notices: ``"auto"`` (signals and every cloud that answers), None, or source names /
            objects (see :func:`spotsafe.notices.make_sources`).
        manager: A ready :class:`~spotsafe.CheckpointManager` of ``root`` (``root`` may then be
            None) to use instead of making one; the run closes it when it ends, as it closes its
            own. Not with ``options`` or manager settings.
        options: The manager's settings as one :class:`~spotsafe.CheckpointOptions`.
        **settings: Or each setting as a keyword argument, as for
            :class:`~spotsafe.CheckpointManager`: ``remote``, ``storage_options``, ``keep``
            (``keep=5`` or a retention policy), ``rng``, ``async_save``, ``when_busy``,
            ``max_pending_uploads``, ``upload_backoff``, ``lease``. No remote given takes
            ``$SPOTSAFE_REMOTE`` when set. With a remote, the run's event file is copied to
            ``<remote>/events/`` too (by the supervisor instead, under ``spotsafe run``).
        margin: Time kept in hand before a notice's deadline (default 3 s): waits on the
            emergency path end this long before it.
        exit_on_notice: Raise :class:`Preempted` (``SystemExit(75)``) after the emergency
            checkpoint (default). False: ``steps()`` just ends, ``stop_requested`` and
            ``exit_code`` tell the caller.
        events_dir: Where the JSON-lines events go (default ``$SPOTSAFE_EVENTS_DIR``, else
            ``<root>/events`` for a local root).
        partial: Resume although components were added to or removed from ``state`` since
            the checkpoint: True for any, or the names that may differ (see
            :meth:`CheckpointManager.restore <spotsafe.CheckpointManager.restore>`).
        leave_on_notice: Under ``torchrun --nnodes MIN:MAX`` (an elastic job): after the job's
            coordinated checkpoint for a notice, a rank that got the notice itself (its node is
            being reclaimed) ends its torchrun agent (SIGKILL), so the node leaves the job and
            the other nodes' agents restart their workers without it, at once, from that
            checkpoint. Without it, torchrun restarts the noticed node's worker too and the job
            re-forms at the old size until the node is gone (a graceful exit of the agent would
            close the rendezvous for every node). Default False.
        scale_lr: ``"linear"``: when the checkpoint was written by W ranks and this job has W',
            multiply every learning rate of the state's optimizers and LR schedulers by W'/W
            (the linear scaling rule, for a job that keeps its per-rank batch, so its global
            batch changes with the world size). Default None: learning rates are restored as
            saved (right for a job that keeps its global batch, e.g. with
            ``ResumableDataLoader(global_batch_size=...)``).

    Example::

        with spotsafe.Run("runs/exp1", state, save_every="15m") as run:
            for step in run.steps(total_steps):
                loss = train_step(next(batches))
                run.log(loss=loss.item())
    """

    def __init__(self, root: str | os.PathLike | None, state: dict[str, Any] | None, *,
                 save_every: SavePolicy | int | float | str | timedelta | None = None, notices: NoticesSpec = "auto",
                 manager: CheckpointManager | None = None, options: CheckpointOptions | None = None,
                 margin: float | str | timedelta = 3.0, exit_on_notice: bool = True,
                 events_dir: str | os.PathLike | None = None, partial: bool | str | Collection[str] = False,
                 clock: Callable[[], float] = time.monotonic, scale_lr: str | None = None,
                 leave_on_notice: bool = False, **settings: Unpack[ManagerSettings]) -> None:
        if state is not None and not isinstance(state, dict):
            raise TypeError(f"state must be a dict of name -> object (or None when a framework integration saves "
                            f"and loads the state), got {type(state).__name__}.")
        if scale_lr is not None and scale_lr not in LR_SCALING:
            raise ValueError(f"scale_lr={scale_lr!r} is not a scaling rule spotsafe knows; use "
                             f"{' or '.join(map(repr, LR_SCALING))}, or None to restore learning rates as saved.")
        self.scale_lr = scale_lr
        self.leave_on_notice = leave_on_notice
        self._leave_agent: int | None = None  # the torchrun agent this rank ends once its checkpoint is durable
        if manager is not None:
            root = _check_manager(manager, root, given=[*(["options"] if options is not None else []), *settings])
            self._options = manager.options
        else:
            self._options = options_from(options, settings, caller="Run")
            if self._options.read_only:
                raise ValueError("Run writes checkpoints, so read_only=True cannot be one of its settings; open a "
                                 "CheckpointManager(read_only=True) to read them instead.")
            if self._options.remote is None and os.environ.get(REMOTE_ENV):
                self._options = dataclasses.replace(self._options, remote=os.environ[REMOTE_ENV])
        self._given_manager = manager
        platform = detect_platform()
        chose = root is None and not os.environ.get(ROOT_ENV) and platform is not None and platform.root is not None
        if root is None:
            root = os.environ.get(ROOT_ENV) or (platform.root if platform is not None else None)
            if not root:
                raise ValueError(f"Run needs a checkpoint root: pass root= or run under `spotsafe run --root DIR`, "
                                 f"which sets ${ROOT_ENV}.")
        remote = self._options.remote
        say_once(logger, platform, "; it copies the root to S3 itself, so spotsafe's upload to the remote is a second "
                                   "copy" if platform is not None and platform.syncs_root and remote else "",
                 chose=chose)
        if save_every is None and os.environ.get(SAVE_EVERY_ENV):
            save_every = os.environ[SAVE_EVERY_ENV]
            parse_interval(save_every, what=f"${SAVE_EVERY_ENV}")  # a bad value is named as the variable
        self.root = os.fspath(root)
        self.state = state
        self.policy = as_policy(save_every)
        self.margin = parse_duration(margin, what="margin")
        self.exit_on_notice = exit_on_notice
        self.partial = partial
        self._sources = make_sources(notices)
        if events_dir is None:
            events_dir = os.environ.get(EVENTS_DIR_ENV) or events_dir_of(self.root)  # None for a URL root
        self._events_dir = events_dir
        self._clock = clock
        self.manager: CheckpointManager | None = None
        self.watcher: NoticeWatcher | None = None
        self._agree: StopAgreement | None = None  # one stop step for every rank (under torchrun)
        self.events: EventLog | None = None
        self._mirror: EventMirror | None = None
        self._mirrored_at = 0.0
        self.start_step = 0
        self.step = 0
        self.total: int | None = None
        self.exit_code: int | None = None
        self.tier: Tier | None = None
        self.completed = False
        self._current: int | None = None
        self._handled: Notice | None = None
        self._submitted = 0                      # newest step handed to the manager (or restored)
        self._reasons: dict[int, SaveReason | str] = {}
        self._reported = 0                       # newest step whose checkpoint event is written
        self._uploads_reported = 0
        self._restore_window = (0.0, 0.0)
        self._saver: Callable[[int, str], SaveStats | None] | None = None  # framework mode: who saves
        self._resumed: str | None = None  # framework mode: what resume_path() answered
        self._any_rank: Callable[[bool], bool] | None = None  # a framework's agreement, where spotsafe has none

    # -- entering and leaving --------------------------------------------------------
    def __enter__(self) -> Run:
        self.events = open_event_log(self._events_dir, root=self.root)  # announced to a supervisor that asks
        remote = self._options.remote
        remote_url = remote.url if isinstance(remote, Storage) else remote
        if remote and self._log.path is not None and not os.environ.get(SUPERVISED_ENV):
            # under ``spotsafe run`` the supervisor copies the events (one writer per remote file)
            self._mirror = EventMirror(remote, self._options.storage_options)
        self.watcher = NoticeWatcher(self._sources)
        self._agree = StopAgreement.from_env()
        if self._agree is not None:
            self._agree.start()
        try:
            self._watch.start()  # before the restore: a notice during it is kept
            if self.state is None:  # framework mode: the framework writes from one rank, the others read
                self.manager = self._given_manager or _framework_manager(
                    self.root, options=self._options, run_id=self._log.run_id, attempt=self._log.attempt)
            else:
                self.manager = self._given_manager or _make_manager(
                    self.root, options=self._options, run_id=self._log.run_id,
                    attempt=self._log.attempt)  # one writer: refused here when taken
            self._log.emit(Event.RUN_START, root=self._mgr.root, remote=remote_url,
                           sources=self._watch.active, policy=repr(self.policy),
                           world_size=int(os.environ.get("WORLD_SIZE") or 1),  # the report's ranks per attempt
                           **({"supervisor": os.environ[SUPERVISOR_ID_ENV]} if os.environ.get(SUPERVISOR_ID_ENV)
                                else {}))
            if self.state is None:  # the framework loads its state: resume_path() finds it
                self.policy.start(self.step, self._clock())
                return self
            w0 = time.time()
            restored = self._mgr.restore(self.state, partial=self.partial)
            self._restore_window = (w0, time.time())
            self.start_step = self.step = restored or 0
            self._submitted = self._reported = self.step
            info, stats = self._mgr.restored, self._mgr.last_restore
            assert stats is not None  # restore() records its stats whatever it found
            world = int(os.environ.get("WORLD_SIZE") or 1)
            saved_world = info.manifest.world_size if restored and info and info.manifest else None
            lr_scale = None
            if restored and saved_world is not None and saved_world != world and self.scale_lr == "linear":
                lr_scale = world / saved_world
                scaled = scale_learning_rates(self.state, lr_scale)
                logger.warning("Checkpoint %s was written by %d ranks and this job has %d: learning rates of %s "
                               "scaled by %d/%d (scale_lr='linear')", step_dir(restored), saved_world, world,
                               ", ".join(scaled) or "nothing", world, saved_world)
            self._log.emit(Event.RESTORE, step=restored, tier=self._tier_name(self._mgr.restored_tier) if restored
                           else None, seconds=stats.total_s, bytes=stats.bytes,
                           skipped=list(self._mgr.restore_skipped), world_size=world,
                           saved_world_size=saved_world, **({"lr_scale": lr_scale} if lr_scale else {}))
            if restored:
                logger.info("Resuming at step %d from %s", restored, info.location if info else self.root)
            if self.policy.wants_history and self._log.path is not None:
                mine = (self._log.host, self._log.pid)
                past = [e for e in read_events(self._log.path.parent) if (e.get("host"), e.get("pid")) != mine]
                self.policy.history(measure(past))
            self.policy.start(self.step, self._clock())
        except BaseException as e:
            self._teardown(wait_remote=False)
            if isinstance(e, RootLockedError) and os.environ.get(SUPERVISED_ENV):
                logger.error("%s", e)
                raise RootLocked() from e
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, Preempted):
            self._teardown(wait_remote=exc.tier == Tier.REMOTE)
            self._leave()
            return
        if exc_type is not None:
            # sys.exit() in the loop is the user's own way out; anything else is a failure
            code = exc.code if isinstance(exc, SystemExit) else 1
            self.exit_code = code if isinstance(code, int) else (0 if code is None else 1)
            try:
                try:
                    self._mgr.wait()  # the save in flight is a consistent snapshot: keep it
                except Exception as e:
                    logger.warning("The checkpoint in flight failed too: %s", e)
                self._report_durable()
                self._log.emit(Event.STOP, reason=StopReason.EXIT if isinstance(exc, SystemExit) else StopReason.ERROR,
                               exit_code=self.exit_code, step=self.step, error=f"{exc_type.__name__}: {exc}")
            finally:
                self._teardown(wait_remote=False)
            return
        try:
            self._finish()
        except BaseException:
            self._teardown(wait_remote=False)
            raise
        self._teardown(wait_remote=self.tier == Tier.REMOTE)
        self._leave()  # exit_on_notice=False: the loop ended on a notice, the same way out

    def _finish(self) -> None:
        """Leaving normally: a final checkpoint of the last step, durable (on the remote too)."""
        if self.exit_code == EXIT_PREEMPTED:  # exit_on_notice=False: the emergency path already ran
            return
        notice = self._watch.notice
        if notice is not None and not self.completed:
            self._notice_now()  # the loop ended early with a notice pending: the emergency path
            return
        if self.step > (self._submitted or 0):
            self._save(self.step, SaveReason.FINAL)
        if self._submitted:
            deadline = self._deadline(notice) if notice is not None else None
            self.tier = self._make_durable(self._submitted, deadline, notice)
            if notice is not None and self.tier is not None:
                self._watch.acknowledge()
        self.exit_code = EXIT_OK
        self._report_durable()
        self._log.emit(Event.STOP, reason=StopReason.COMPLETED if self.completed else StopReason.EXIT,
                       exit_code=EXIT_OK,
                       step=self.step, tier=self.tier, notice=notice.source if notice else None)

    def _teardown(self, *, wait_remote: bool) -> None:
        errors = []
        if self.manager is not None:
            try:
                self.manager.close(wait_remote=wait_remote)
            except BaseException as e:
                errors.append(e)
            if self.exit_code is None:  # no stop event yet (it is the last event of a process)
                try:
                    self._report_durable()
                except Exception:
                    pass
        if self._agree is not None:
            self._agree.close()
        if self.watcher is not None:
            self.watcher.stop()
        if self.events is not None:
            self.events.close()
            if self._mirror is not None:
                if self.events.path is not None:  # always: a mirror is made only for an event file
                    self._mirror.push(self.events.path)
                self._mirror.close(timeout=2.0)
        if errors and self.exit_code != EXIT_PREEMPTED:
            raise errors[0]
        for error in errors:
            logger.warning("After the notice: %s", error)

    # -- the parts __enter__ makes ---------------------------------------------------------
    @property
    def _mgr(self) -> CheckpointManager:
        return _entered(self.manager)

    @property
    def _watch(self) -> NoticeWatcher:
        return _entered(self.watcher)

    @property
    def _log(self) -> EventLog:
        return _entered(self.events)

    # -- a framework's state (Run(root, None)) -------------------------------------------
    @property
    def writer(self) -> bool:
        """Whether this process writes the checkpoints: True but on the other ranks of a framework's job
        (``Run(root, None)``), which open the root read-only while rank 0 writes."""
        return not self._mgr.read_only

    def use_saver(self, saver: Callable[[int, str], SaveStats | None]) -> None:
        """Make ``Run(root, None)`` checkpoint through a framework: ``saver(step, reason)`` is called on every
        rank at the same step whenever the policy, a notice or the end of the run wants a checkpoint of the
        step just finished. It makes the framework write its state and, on the writing rank
        (:attr:`writer`), hands it to :attr:`manager` (``save``, ``save_files``) and returns the manager's
        :class:`SaveStats`; None elsewhere. The integrations in ``spotsafe.lightning``, ``spotsafe.hf``
        and ``spotsafe.accelerate`` install theirs."""
        self._saver = saver

    def use_agreement(self, any_rank: Callable[[bool], bool]) -> None:
        """Agree through the framework where spotsafe's own agreement is unavailable (ranks not started by
        ``torchrun``): ``any_rank(flag)`` is a collective every rank calls at the end of the same step, true
        on every rank when ``flag`` is true on one (Accelerate's ``set_trigger``/``check_trigger``,
        Lightning's ``reduce_boolean_decision``). It decides the stop after a notice and, for a policy
        of time, the save. Unused when spotsafe's agreement (no collective per step) is there."""
        self._any_rank = any_rank

    def checkpointed(self, step: int, stats: SaveStats | None = None, reason: str = "framework") -> None:
        """Record that the framework saved ``step`` on its own schedule (e.g. the HF Trainer's ``save_steps``)
        and the integration handed it to :attr:`manager`: the policy counts from it and a notice after it
        only waits for it to be durable. Call it on every rank."""
        self._reasons[step] = reason
        self._submitted = max(self._submitted or 0, step)
        self.policy.saved(step, self._clock(), stats.stall_s if stats is not None else 0.0)

    def resume_path(self) -> str | None:
        """For ``Run(root, None)``: the folder of the newest valid checkpoint, for the framework to load; None
        for a fresh start.

        Every file of it is checked against its checksum first; a corrupt or half-written
        checkpoint is skipped (with a :class:`~spotsafe.CheckpointSkippedWarning`) for the next
        newest. When only the remote holds it (a new machine), it is downloaded, verified and
        written into the local root first. Call it on every rank: under torch.distributed the
        other ranks get the folder rank 0 chose, once it is there. Sets :attr:`start_step` and
        writes the ``restore`` event.
        """
        if self.state is not None:
            raise RuntimeError("resume_path() is for a Run whose framework loads the state (Run(root, None)); this "
                               "Run restored its state when it was entered.")
        mgr = self._mgr
        w0 = time.time()
        together = _distributed()
        info = mgr.local_copy() if self.writer or not together else None
        step = info.step if info is not None else None
        if together:
            step = _from_writer(step)  # after rank 0 fetched it: the same folder everywhere
        self._restore_window = (w0, time.time())
        stats = mgr.last_restore
        name = step_dir(step) if step else None
        path = None
        if name is not None:
            path = str(mgr.storage.path(name)) if isinstance(mgr.storage, LocalFiles) else f"{mgr.root}/{name}"
        saved = mgr.restored.manifest if mgr.restored is not None and mgr.restored.step == step else None
        self.start_step = self.step = step or 0
        self._submitted = self._reported = self.step
        self._log.emit(Event.RESTORE, step=step, tier=self._tier_name(mgr.restored_tier) if step and info else None,
                       seconds=stats.total_s if stats is not None and info else None,
                       bytes=stats.bytes if stats is not None and info else 0, skipped=list(mgr.restore_skipped),
                       world_size=int(os.environ.get("WORLD_SIZE") or 1),
                       saved_world_size=saved.world_size if saved is not None else None)
        if path is not None:
            logger.info("Resuming at step %d from %s", step, path)
        self.policy.start(self.step, self._clock())
        self._resumed = path
        return path

    def _save_through_framework(self, step: int, reason: SaveReason | str) -> SaveStats:
        if self._saver is None:
            raise RuntimeError("Run(root, None) checkpoints through a framework integration, and none is attached; "
                               "use spotsafe.lightning, spotsafe.hf or spotsafe.accelerate, or pass the state dict.")
        t0 = time.perf_counter()
        stats = self._saver(step, str(reason))
        if stats is not None and stats.skipped and stats.total_s is None and reason in (SaveReason.FINAL,
                                                                                        SaveReason.NOTICE):
            self._mgr.wait()  # the last checkpoint of a run is never skipped behind a busy save
            stats = self._saver(step, str(reason))
        elapsed = time.perf_counter() - t0  # the framework's own part counts as stall too
        stats = (SaveStats(step=step, bytes=0, stage_s=0.0, persist_s=None, total_s=None, stall_s=elapsed)
                 if stats is None else dataclasses.replace(stats, stall_s=max(stats.stall_s, elapsed)))
        self._reasons[step] = reason
        self._submitted = step
        self.policy.saved(step, self._clock(), stats.stall_s)
        return stats

    # -- the loop ----------------------------------------------------------------------
    def steps(self, total: int) -> Iterator[int]:
        """Yield the step numbers left, ``restored + 1`` .. ``total``; save and watch between them."""
        self.total = total
        if self.step >= total:
            self.completed = True
            return
        if self._notice_now():
            return
        for step in range(self.step + 1, total + 1):
            self._current = step
            yield step
            self.step_done(step)
            if self.stop_requested and not self.completed and self._notice_now():
                return  # a notice that came during step_done's own save is handled here

    def step_done(self, step: int) -> None:
        """Call after each finished step when not using :meth:`steps`: saves by policy, handles notices."""
        self.step = step
        self._current = None
        if self.total is not None and step >= self.total:
            self.completed = True
        now = self._clock()
        if not self.completed and self._notice_now():
            return
        advisories = self._watch.new_advisories()
        for adv in advisories:
            self._log.emit(Event.NOTICE, source=adv.source, reason=adv.reason, seconds_left=None, advisory=True,
                           step=step)
            logger.warning("Early warning from %s (%s): checkpointing step %d now", adv.source, adv.reason, step)
        due = self._save_due(step, now, bool(advisories))
        reason = SaveReason.NOTICE if advisories else SaveReason.POLICY
        if due and not self.completed:
            self._save(step, reason)
        self._report_durable()

    def _save_due(self, step: int, now: float, warned: bool) -> bool:
        """Whether the policy (or an early warning) saves after ``step``.

        One process: its own policy. Under ``torchrun`` every rank must save the same step: a
        policy of steps alone decides the same on every rank; a time-based one is asked on
        rank 0 only, and it (or an early warning on any rank) asks every rank for a save point
        (:meth:`StopAgreement.request_save <spotsafe._dist.StopAgreement.request_save>`).
        """
        ag = self._agree
        if ag is None:
            due = self.policy.due(step, now) or warned
            if self._any_rank is not None and not (self.policy.by_step and not warned):
                due = self._any_rank(due)  # a clock differs between ranks: they save when one asks
            return due
        by_step = self.policy.by_step
        local = self.policy.due(step, now) if by_step or ag.rank == 0 else False
        if warned or (local and not by_step):
            ag.request_save()
        try:
            agreed = ag.should_save(step)
        except AgreementFailed as e:
            logger.error("%s", e)
            raise
        return (local and by_step) or agreed

    @property
    def stop_requested(self) -> bool:
        """A notice arrived: finish the current step and stop (loops without :meth:`steps` check this).

        Under ``torchrun`` it turns True on every rank at the end of the same step, the one the
        ranks agreed on (see :mod:`spotsafe._dist`).
        """
        if self.watcher is None:
            return False
        if self._any_rank is not None and self._agree is None:
            return self._handled is not None  # the framework's collective decides, in step_done only
        if self._agree is None or self._handled is not None:
            return self.watcher.notice is not None or self._handled is not None
        return self._stop_notice() is not None

    @property
    def notice(self) -> Notice | None:
        return self.watcher.notice if self.watcher else None

    @property
    def grad_accum(self) -> int:
        """Micro-batches to accumulate per optimizer step at this world size: the ``grad_accum`` of
        the state's :class:`~spotsafe.data.ResumableDataLoader` (or ``ResumableSampler``) made with
        ``global_batch_size``; 1 without one."""
        from ..data import ResumableDataLoader, ResumableSampler

        for obj in (self.state or {}).values():
            if isinstance(obj, (ResumableDataLoader, ResumableSampler)):
                return obj.grad_accum
        return 1

    def log(self, **values: Any) -> None:
        """Record user metrics (``loss=...``) as a ``metrics`` event of the current step."""
        step = values.pop("step", None)
        if step is None:
            step = self._current if self._current is not None else self.step
        self._log.emit(Event.METRICS, step=step, values=values)

    def save(self, reason: str = SaveReason.MANUAL) -> SaveStats:
        """Checkpoint the last finished step now (asynchronously, as policy saves are)."""
        return self._save(self.step, reason)

    # -- internals -------------------------------------------------------------------------
    def _save(self, step: int, reason: SaveReason | str) -> SaveStats:
        if self.state is None:
            return self._save_through_framework(step, reason)
        epoch = next((v.epoch for v in self.state.values() if isinstance(getattr(v, "epoch", None), int)), None)
        stats = self._mgr.save(step, self.state, epoch=epoch)
        if stats.skipped and stats.total_s is None and reason in (SaveReason.FINAL, SaveReason.NOTICE):
            # skipped because the previous save still persists (when_busy="skip"): the last checkpoint of a run
            # is never one of those, so wait for that save and take this one
            self._mgr.wait()
            stats = self._mgr.save(step, self.state, epoch=epoch)
        self._reasons[step] = reason
        self._submitted = step
        self.policy.saved(step, self._clock(), stats.stall_s)
        return stats

    def _report_durable(self) -> None:
        """Write the events of saves and uploads finished since the last call (cheap when none did)."""
        mgr = self.manager
        if mgr is None:
            return
        if mgr.last_save is not None and mgr.last_save.step > self._reported:
            for last in list(mgr.durable_saves):
                if last.step <= self._reported:
                    continue
                self._reported = last.step
                self._log.emit(Event.CHECKPOINT, step=last.step, reason=self._reasons.get(last.step, SaveReason.POLICY),
                               bytes=last.bytes, stall_s=last.stall_s, waited_s=last.waited_s,
                               stage_s=last.stage_s, persist_s=last.persist_s, total_s=last.total_s)
        watermark = mgr.remote_watermark
        if watermark is not None and watermark > self._uploads_reported:
            for up in mgr.uploads:
                if up.step > self._uploads_reported:
                    self._log.emit(Event.UPLOAD, step=up.step, bytes=up.bytes, upload_s=up.upload_s,
                                   retries=up.retries)
            self._uploads_reported = max(watermark, *(u.step for u in mgr.uploads), self._uploads_reported)
            now = time.monotonic()
            if self._mirror is not None and self._log.path is not None and now - self._mirrored_at >= MIRROR_EVERY_S:
                self._mirrored_at = now
                self._mirror.push(self._log.path)

    def _deadline(self, notice: Notice) -> float:
        """The notice's deadline, less the margin, on the monotonic clock."""
        left = notice.seconds_left()
        if left is None:
            left = DEFAULT_GRACE - (time.time() - notice.received)
        return time.monotonic() + left - self.margin

    def _notice_now(self) -> bool:
        """Handle a pending notice; True when the loop must stop (exit_on_notice=False)."""
        if self._handled is not None:
            return True
        notice = self._stop_notice()
        if notice is None:
            return False
        self._handled = notice
        self._emergency(notice)
        return True

    def _stop_notice(self) -> Notice | None:
        """The notice to stop on after the last finished step, or None to go on.

        One process: this process's notice. Under ``torchrun`` (several ranks): a notice seen
        here asks every rank to stop, and every rank stops after the step they agree on; a rank
        that saw none stops on the notice of the rank that did.
        """
        local = self._watch.notice
        ag = self._agree
        if ag is None:
            if self._any_rank is None:
                return local
            if not self._any_rank(local is not None and not local.advisory):
                return None
            return local or Notice(source="notice on another rank", deadline=None, reason="another rank was warned")
        if local is not None and not local.advisory:
            ag.request(local.source, local.reason, local.deadline)
        try:
            if not ag.should_stop(self.step):
                return None
        except AgreementFailed as e:
            logger.error("%s", e)
            raise
        if local is not None:
            return local
        asked = ag.notice or {}
        return Notice(source=f"{asked.get('source', 'notice')} on rank {asked.get('rank', '?')}",
                      deadline=asked.get("deadline"), reason=str(asked.get("reason", "another rank was warned")))

    def _emergency(self, notice: Notice) -> None:
        step = self.step
        deadline = self._deadline(notice)
        w0, w1 = self._restore_window
        during = "restore" if w0 <= notice.received <= w1 else ("step" if step > self.start_step else "start")
        self._log.emit(Event.NOTICE, source=notice.source, reason=notice.reason, seconds_left=notice.seconds_left(),
                       advisory=False, step=step, during=during)
        logger.warning("Interruption notice from %s (%s, %s left): checkpointing step %d and stopping",
                       notice.source, notice.reason, format_duration(max(0.0, deadline - time.monotonic()
                                                                         + self.margin)), step)
        if step > (self._submitted or 0):
            self._save(step, SaveReason.NOTICE)
        if self._submitted != self.start_step:
            tier = self._make_durable(self._submitted, deadline, notice)
        elif self.start_step:
            tier = self._tier_name(self._mgr.restored_tier)
            logger.warning("No step has run since the restore: %s (%s) is the checkpoint to resume from.",
                           step_dir(self.start_step), tier)
        else:
            tier = Tier.NONE
            logger.warning("No step has run yet: nothing to checkpoint, nothing is lost.")
        self.tier = tier
        self._report_durable()
        if tier is not None:
            self._watch.acknowledge()
        self.exit_code = EXIT_PREEMPTED
        self._log.emit(Event.STOP, reason=StopReason.NOTICE, exit_code=EXIT_PREEMPTED, step=step, tier=tier,
                       checkpoint_step=self._submitted, source=notice.source,
                       notice_to_durable_s=time.time() - notice.received if tier in (Tier.LOCAL, Tier.REMOTE) else None,
                       seconds_left=notice.seconds_left())
        if self.leave_on_notice and self._watch.notice is not None:  # this node's own notice
            self._leave_agent = _torchrun_agent()
            if self._leave_agent is not None:
                logger.warning("This node got the notice: leaving the elastic job (its torchrun agent, pid %d, is "
                               "ended); the other nodes go on from %s", self._leave_agent,
                               step_dir(self._submitted or step))
        if self.exit_on_notice:
            raise Preempted(notice, step, tier)

    def _leave(self) -> None:
        """End this node's torchrun agent (``leave_on_notice``): a SIGKILL, as when the node dies, so its
        rendezvous is not closed for the others."""
        if self._leave_agent is None:
            return
        try:
            os.kill(self._leave_agent, signal.SIGKILL)
        except OSError as e:
            logger.warning("Could not end the torchrun agent %d (%s); the node leaves when it goes", self._leave_agent, e)

    def _make_durable(self, step: int, deadline: float | None, notice: Notice | None) -> Tier | None:
        """Wait until ``step`` is durable on the best tier that fits; return ``Tier.REMOTE``, ``Tier.LOCAL``
        or None. A framework's job (``Run(root, None)`` under torch.distributed): rank 0 waits, every
        rank learns its answer."""
        if self.state is not None or not _distributed():
            return self._make_durable_here(step, deadline, notice)
        return _from_writer(self._make_durable_here(step, deadline, notice) if self.writer else None)

    def _make_durable_here(self, step: int, deadline: float | None, notice: Notice | None) -> Tier | None:
        mgr = self._mgr
        name = step_dir(step)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                logger.error("%s is not durable and the deadline has come: the newest durable checkpoint is %s; "
                             "restarting replays from it.", name,
                             step_dir(mgr.last_save.step) if mgr.last_save else "none")
                return None
            try:
                mgr.wait(timeout=None if left is None else min(left, 1.0))
                break
            except TimeoutError:
                continue
        if mgr.remote is None:
            if notice is not None:
                logger.warning("%s is durable at %s.", name, mgr.root)
            return self._tier_name(Tier.ROOT)
        mgr.prioritize_upload(step)
        estimate, why = self._upload_estimate(step)
        left = None if deadline is None else deadline - time.monotonic()
        if notice is not None and self._watch.urgent:
            logger.warning("%s is durable on local disk at %s; not waiting for the upload to %s: a second signal "
                           "came.", name, mgr.root, mgr.remote.url)
            return Tier.LOCAL
        if left is not None and estimate is not None and estimate > left:
            logger.warning("%s is durable on local disk at %s only: its upload to %s would take about %s (%s), "
                           "more than the %s left. The newest step confirmed there is %s.", name, mgr.root,
                           mgr.remote.url, format_duration(estimate), why, format_duration(max(0.0, left)),
                           self._confirmed_on_remote())
            return Tier.LOCAL
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                logger.warning("%s is durable on local disk at %s; its upload to %s did not finish before the "
                               "deadline. The newest step confirmed there is %s.", name, mgr.root, mgr.remote.url,
                               self._confirmed_on_remote())
                return Tier.LOCAL
            if notice is not None and self._watch.urgent:
                logger.warning("%s is durable on local disk at %s; stopped waiting for the upload to %s: a second "
                               "signal came.", name, mgr.root, mgr.remote.url)
                return Tier.LOCAL
            try:
                # True only once this manager confirmed ``step`` itself on the remote: a higher step there
                # (another run's, a garbage manifest) never ends this wait
                done = mgr.wait_uploaded(step, timeout=_SLICE if notice is not None else 1.0)
                if not done and not mgr.upload_pending(step):
                    done = mgr.wait_uploaded(step, timeout=0)  # it may have landed since
                    if not done:  # neither queued nor in flight: dropped, or refused (logged where it was)
                        logger.warning("%s is durable on local disk at %s; it will not reach %s (its upload was "
                                       "dropped or refused). The newest step confirmed there is %s.", name,
                                       mgr.root, mgr.remote.url, self._confirmed_on_remote())
                        return Tier.LOCAL
            except Exception as e:
                if notice is None:
                    raise
                logger.warning("%s is durable on local disk at %s; its upload to %s failed (%s).", name, mgr.root,
                               mgr.remote.url, e)
                return Tier.LOCAL
            if done:
                if notice is not None:
                    logger.warning("%s is durable on %s (and on local disk).", name, mgr.remote.url)
                return Tier.REMOTE

    def _confirmed_on_remote(self) -> str:
        """The newest step this run's manager confirmed on the remote, for a log line."""
        mark = self._mgr.remote_watermark
        return step_dir(mark) if mark is not None else "none yet"

    def _tier_name(self, tier: Tier | None) -> Tier | None:
        """``local`` or ``remote`` for the manager's ``root``/``remote`` (a URL root is remote)."""
        if tier == Tier.ROOT:
            return Tier.REMOTE if is_url(self.root) else Tier.LOCAL
        return tier

    def _upload_estimate(self, step: int) -> tuple[float | None, str]:
        """Seconds to upload ``step`` and the older steps ahead of it, from measured bandwidth."""
        ups = [u for u in self._mgr.uploads if u.upload_s > 0 and u.bytes > 0][-5:]
        if not ups:
            return None, "no upload measured yet"
        bw = statistics.median(u.bytes / u.upload_s for u in ups)
        size = self._mgr.last_save.bytes if self._mgr.last_save else ups[-1].bytes
        ahead = len(self._mgr.upload_backlog(step))
        return (1 + ahead) * size / bw, f"{(1 + ahead) * size / 2**20:.0f} MiB at {bw / 1e6:.0f} MB/s"
