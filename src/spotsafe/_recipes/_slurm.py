"""SLURM: an sbatch script that requeues the job itself when ``spotsafe run`` exits 75.

Why the script is built this way (schedmd's sbatch, scontrol and preempt pages):

- Exit 75 alone leaves a SLURM job FAILED. A job is requeued automatically on an exit code
  only when the admin set ``RequeueExit=75`` in slurm.conf, so the script calls
  ``scontrol requeue`` on its own job (``<array job>_<task>`` for an array task) and then
  exits 0: the job goes back to PENDING with the same id, ``SLURM_RESTART_COUNT`` one higher.
- ``--signal=B:USR1@N`` sends SIGUSR1 N seconds before the time limit to the batch shell only
  (``B:``). bash runs a trap only between commands, so the supervisor runs in the background
  and the shell waits for it: the trap forwards SIGTERM, and ``wait`` is resumed until the
  supervisor really exited.
- ``SLURM_RESTART_COUNT`` is the platform's retry count: past ``max_restarts`` the script no
  longer requeues and exits 3, spotsafe's "retry budget spent".
"""

from __future__ import annotations

import math
import shlex

from .._env import JOB_ROOT_ENV, NO_REQUEUE_ENV, SLURM_GRACE_ENV
from ._options import EXIT_CODE, MARGIN_S, RecipeOptions

_ROOT_VAR = JOB_ROOT_ENV
_SENTINEL = "\x00root\x00"
EXIT_BUDGET_SPENT = 3
"""The script's exit status when ``SLURM_RESTART_COUNT`` reached ``max_restarts`` (as ``spotsafe run``'s)."""


def _command_line(opts: RecipeOptions) -> str:
    """``spotsafe run`` around the command, the root as ``"$SPOTSAFE_JOB_ROOT"`` (expanded by the shell)."""
    argv = opts.supervised(_SENTINEL, remote=opts.remote)
    return " ".join(f'"${_ROOT_VAR}"' if a == _SENTINEL else shlex.quote(a) for a in argv)


def render(opts: RecipeOptions) -> str:
    """The sbatch script for ``opts``: requeue on 75, the signal early enough for the save budget."""
    grace = opts.grace_s()
    budget = math.ceil(opts.budget_s)
    root = (shlex.quote(opts.root) if opts.root
            else f'"${{SLURM_SUBMIT_DIR:-$PWD}}/runs/"{shlex.quote(opts.name)}')
    remote = f"and replicated to {opts.remote}" if opts.remote else "(no --remote: the root must be on a shared file system)"
    return f"""#!/bin/bash
# SLURM recipe for a spot-safe job, written by `spotsafe recipe slurm`. Submit: sbatch {opts.name}.sbatch
#
# Time budget: the save budget is {opts.budget_s:.0f} s ({opts.budget_source}). SLURM sends
# SIGUSR1 to this shell {grace} s before the time limit (--signal=B:USR1@{grace}: the budget plus a
# {MARGIN_S:.0f} s margin for the stop itself); the shell forwards SIGTERM to `spotsafe run`, which
# gives the command {budget} s (--grace) to checkpoint and exit 75, then this script requeues the job.
#
# Preemption: with PreemptMode=REQUEUE, SLURM sends SIGCONT+SIGTERM to every process of the
# job, then SIGKILL after the partition's GraceTime: ask your admin for GraceTime >= {grace}.
# The --signal below is sent on preemption too only if the admin set
# SlurmctldParameters=preempt_send_user_signal; without it the SIGTERM is the notice, and the
# job is requeued by SLURM itself (--requeue). scancel and the time limit send SIGTERM, then
# SIGKILL after KillWait (30 s by default).
#
# Exit status: 0 finished, or stopped with its checkpoint durable and requeued (the job goes
# back to PENDING, same job id, SLURM_RESTART_COUNT + 1). Exit 75 alone would leave the job
# FAILED unless the admin set RequeueExit=75 (then do not also call scontrol requeue: set
# {NO_REQUEUE_ENV}=1). {EXIT_BUDGET_SPENT} after {opts.max_restarts} requeues (SLURM_RESTART_COUNT),
# 75 when scontrol requeue failed; anything else is `spotsafe run`'s own failure code.
#
# Not verified on a real cluster by spotsafe's tests (they run this script under bash with a
# fake scontrol): partition names, GraceTime, and whether your site allows requeue.
#SBATCH --job-name={opts.name}
#SBATCH --requeue
#SBATCH --signal=B:USR1@{grace}
#SBATCH --open-mode=append
#SBATCH --output={opts.name}-%j.out
# Add your site's own lines: --partition, --time, --gres=gpu:N, --cpus-per-task, ...

set -u
# The checkpoint root, {remote}.
{_ROOT_VAR}={root}
MAX_REQUEUES={opts.max_restarts}
export {SLURM_GRACE_ENV}={budget}   # the seconds a SLURM signal leaves spotsafe.Run to save

restarts="${{SLURM_RESTART_COUNT:-0}}"
echo "spotsafe recipe: job ${{SLURM_JOB_ID:-?}} start $((restarts + 1)) on $(hostname), root ${_ROOT_VAR}" >&2

{_command_line(opts)} &
child=$!
forward() {{ kill -TERM "$child" 2>/dev/null; }}
trap forward USR1 TERM

while :; do
    wait "$child"
    status=$?
    if [ "$status" -gt 128 ]; then            # wait was cut short by a trapped signal, or the child died of one
        if kill -0 "$child" 2>/dev/null; then continue; fi
        wait "$child" 2>/dev/null
        again=$?
        if [ "$again" -ne 127 ]; then status=$again; fi
    fi
    break
done
trap - USR1 TERM
echo "spotsafe recipe: spotsafe run exited $status" >&2

if [ "$status" -ne {EXIT_CODE} ]; then
    exit "$status"                            # 0 finished; anything else a failure SLURM reports
fi
if [ -z "${{SLURM_JOB_ID:-}}" ] || [ -n "${{{NO_REQUEUE_ENV}:-}}" ]; then
    exit {EXIT_CODE}                                   # not under SLURM, or RequeueExit=75 requeues it
fi
if [ "$restarts" -ge "$MAX_REQUEUES" ]; then
    echo "spotsafe recipe: stopped with its checkpoint durable, but $restarts requeue(s) reached" \
         "MAX_REQUEUES=$MAX_REQUEUES; not requeueing (resubmit to continue)." >&2
    exit {EXIT_BUDGET_SPENT}
fi
job="${{SLURM_JOB_ID}}"
if [ -n "${{SLURM_ARRAY_JOB_ID:-}}" ] && [ -n "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
    job="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
if scontrol requeue "$job"; then
    echo "spotsafe recipe: checkpoint durable; requeued job $job (requeue $((restarts + 1)) of $MAX_REQUEUES)." >&2
    exit 0
fi
echo "spotsafe recipe: scontrol requeue $job failed; the checkpoint is durable: resubmit this script to continue." >&2
exit {EXIT_CODE}
"""
