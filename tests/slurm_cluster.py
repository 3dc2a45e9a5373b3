"""A real single-node SLURM (slurmctld + slurmd + munged) started by a test, as root, in a temp dir.

No systemd and nothing under /etc: the key, sockets, state, spool, logs and pid files live in
the cluster's own directory, munged listens on its own socket (slurm.conf ``AuthInfo=socket=``),
and every client finds the cluster through ``SLURM_CONF``. The ports are chosen free at start.

What it kills: the three daemons' process groups, then every process whose environment carries
this cluster's ``SLURM_CONF`` (slurmstepd and the jobs it started inherit it; they leave the
daemons' process groups), and nothing else.

Debian packages: ``slurm-wlm`` (slurmctld, slurmd, the client commands) and ``munge``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")

CONF = """\
ClusterName=spotsafe-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=300
JobRequeue=1
NodeName={host} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def missing_binaries() -> list[str]:
    """The SLURM and munge programs this needs that are not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, logs: list[Path], procs: list[subprocess.Popen]) -> None:
    """Poll ``check()`` every 0.1 s until true; fail naming ``what`` and the logs' tails after ``timeout`` s
    or as soon as one of ``procs`` died."""
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"not within {timeout:.0f} s"
            tails = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())
            raise RuntimeError(f"SLURM test cluster: {what}: {why}; the logs follow.\n{tails}")
        time.sleep(0.1)


class SlurmCluster:
    """``with SlurmCluster() as c: c.run("sbatch", ...)``: up in a few seconds, torn down on exit."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ss-slurm-", dir="/tmp"))  # short: socket paths max 107 bytes
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])}
        self._procs: list[subprocess.Popen] = []

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if missing := missing_binaries():
            raise RuntimeError(f"SLURM test cluster: {', '.join(missing)} not installed; "
                               "install them with `apt-get install -y slurm-wlm munge`.")
        if os.geteuid() != 0:
            raise RuntimeError("SLURM test cluster: slurmd must run as root to start jobs; run the test as root.")
        d = self.dir
        d.chmod(0o755)                  # munged wants its socket's directories open to all (execute)
        for sub in ("state", "spool", "log", "munge"):
            (d / sub).mkdir()
            (d / sub).chmod(0o755)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = d / "munge" / "munge.socket"
        self.conf.write_text(CONF.format(host=self.host, d=d, ctld_port=_free_port(), slurmd_port=_free_port(),
                                         munge_socket=self.munge_socket))
        log = d / "log"
        self._spawn("munged", "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                    f"--pid-file={d}/munge/munged.pid", f"--seed-file={d}/munge/munged.seed",
                    f"--log-file={log}/munged.log", out=log / "munged.out")
        _wait("munged's socket", self.munge_socket.exists, 10, [log / "munged.log", log / "munged.out"], self._procs)
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf), out=log / "slurmctld.out")
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.host, out=log / "slurmd.out")
        logs = [log / "slurmctld.log", log / "slurmd.log", log / "slurmctld.out", log / "slurmd.out"]
        _wait("the node idle", lambda: self.node_state().startswith("idle"), 20, logs, self._procs)

    def _spawn(self, name: str, *args: str, out: Path) -> None:
        with open(out, "wb") as f:
            self._procs.append(subprocess.Popen([shutil.which(name, path=self.env["PATH"]), *args], env=self.env,
                                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, cwd=self.dir))

    def stop(self) -> None:
        """Cancel the jobs, kill the daemons and every process carrying this SLURM_CONF, remove the dir."""
        if self._procs and all(p.poll() is None for p in self._procs):
            self.run("scancel", "--full", "--signal=KILL", "--partition=debug", timeout=5, check=False)
        for p in reversed(self._procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._kill_strays()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_strays(self) -> None:
        """slurmstepd and the job's processes: every process whose environment names this cluster's conf."""
        mark = f"SLURM_CONF={self.conf}".encode()
        for _ in range(3):
            found = False
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
                    continue
                try:
                    environ = (pid_dir / "environ").read_bytes()
                except OSError:
                    continue
                if mark in environ.split(b"\0"):
                    found = True
                    try:
                        os.kill(int(pid_dir.name), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if not found:
                return
            time.sleep(0.2)

    # -- clients -----------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 10, check: bool = True, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster, bounded in time, output captured as text."""
        done = subprocess.run(list(args), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-N", "-o", "%T", timeout=5, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job ID`` as a dict (JobState, Restarts, ExitCode, Reason, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, timeout=5).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def log(self, name: str) -> str:
        p = self.dir / "log" / name
        return p.read_text(errors="replace") if p.exists() else ""
