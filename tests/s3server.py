"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``) on 127.0.0.1.

One ``weed server`` process runs master, volume server, filer and S3 gateway. Every port
is picked here (HTTP port P and its gRPC port P+10000, both passed explicitly), the
gateway's fixed Iceberg/Lance ports are disabled, telemetry is off, so several servers can
run at once and nothing talks to anything but 127.0.0.1.

Facts found while writing this (weed 4.48):

* With no identities configured the gateway accepts any access key/secret, even unsigned
  requests, but then ListBuckets always answers []. So by default (``auth=True``) one
  identity (ACCESS_KEY/SECRET_KEY, admin) is configured via ``-s3.config``: signatures are
  checked (a wrong key gives InvalidAccessKeyId) and ListBuckets works. ``auth=False``
  gives the anything-goes mode.
* A graceful stop (SIGTERM/SIGINT) hangs for good (the filer's gRPC GracefulStop waits on
  its own metadata subscriptions), so :meth:`stop` sends SIGTERM, waits briefly, then
  SIGKILLs. Data survives that: the filer's leveldb and the volume files are written
  through to the OS, and :meth:`restart` checks an object written before the stop.
* With persisted Raft state a restarted single master needs ~20 s to elect itself, so the
  master runs with ``-master.resumeState=false`` (its topology is rebuilt from volume
  heartbeats; object data lives in the filer and volume files and is kept).
* Each bucket is its own collection and gets its own volumes; the default "grow 7 volumes"
  is cut to 2 (``WEED_MASTER_VOLUME_GROWTH_COPY_1``), volumes are small (64 MB, sparse)
  and their number unbounded (``-volume.max=0`` = free disk / volume size).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

HOST = "127.0.0.1"
ACCESS_KEY = "spotsafe-test"
SECRET_KEY = "spotsafe-test-secret"
REGION = "us-east-1"
PROBE_BUCKET = "weed-ready-probe"

# HTTP ports come from [15000, 22000); their gRPC ports (P+10000) then lie in [25000, 32000).
# Both stay below Linux's default ephemeral range (32768-60999), so outgoing connections
# never take them between the check here and weed's bind.
_PORT_LO, _PORT_HI = 15000, 22000
_GRPC_OFFSET = 10000
_SERVICES = ("s3", "master", "volume", "filer")

_taken: set[int] = set()
_taken_lock = threading.Lock()
_live: weakref.WeakSet[SeaweedS3] = weakref.WeakSet()


def weed_binary() -> Path:
    exe = Path(sys.executable).with_name("weed")
    if exe.exists():
        return exe
    from shutil import which

    found = which("weed")
    if not found:
        raise RuntimeError(f"SeaweedFS 'weed' binary not found next to {sys.executable} or on PATH")
    return Path(found)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_ports(n: int) -> list[int]:
    """``n`` ports P such that P and P+10000 are both free and not handed out before."""
    out: list[int] = []
    with _taken_lock:
        for _ in range(2000):
            p = random.randrange(_PORT_LO, _PORT_HI)
            if p in _taken or p + _GRPC_OFFSET in _taken or p in out:
                continue
            if _port_free(p) and _port_free(p + _GRPC_OFFSET):
                out.append(p)
                if len(out) == n:
                    _taken.update(out)
                    _taken.update(q + _GRPC_OFFSET for q in out)
                    return out
    raise RuntimeError("could not find free port pairs (P, P+10000) for SeaweedFS")


def _release_ports(ports: dict[str, int]) -> None:
    with _taken_lock:
        for p in ports.values():
            _taken.discard(p)
            _taken.discard(p + _GRPC_OFFSET)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed if pytest dies
        except Exception:
            pass


try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


class SeaweedS3:
    """One SeaweedFS server (master+volume+filer+S3) with its data under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        auth: bool = True,
        volume_size_mb: int = 64,
        volumes_per_grow: int = 2,
    ):
        self.data_dir = Path(data_dir)
        self.auth = auth
        self.volume_size_mb = volume_size_mb
        self.volumes_per_grow = volumes_per_grow
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "weed.log"
        self._log = None

    # -- addresses and settings -------------------------------------------------------
    @property
    def port(self) -> int:
        if not self.ports:
            raise RuntimeError("server never started: no port yet")
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment that points boto3/botocore/s3fs at this server (AWS_ENDPOINT_URL)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def storage_options(self) -> dict:
        """fsspec/s3fs options naming this server explicitly (no environment needed)."""
        return {
            "endpoint_url": self.endpoint,
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"region_name": REGION},
        }

    def client(self, *, timeout: float = 10.0, attempts: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(
                connect_timeout=min(timeout, 5.0),
                read_timeout=timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` through the S3 API (fine if this server already has it)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    # -- process control --------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _command(self) -> list[str]:
        p = self.ports
        g = _GRPC_OFFSET
        return [
            str(weed_binary()),
            "server",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + g}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + g}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + g}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + g}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.resumeState=false",
            "-master.electionTimeout=1s",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ] + ([f"-s3.config={self.data_dir / 's3.json'}"] if self.auth else [])

    def start(self, timeout: float = 30.0) -> SeaweedS3:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        if self.auth:
            identity = {
                "name": "tester",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            (self.data_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        fresh = not self.ports
        tries = 3 if fresh else 1
        for attempt in range(tries):
            if fresh:
                self.ports = dict(zip(_SERVICES, _pick_ports(len(_SERVICES))))
            try:
                self._launch()
                self._wait_ready(timeout)
                return self
            except _PortClash:
                self._kill()
                if attempt + 1 == tries:
                    raise RuntimeError(f"SeaweedFS could not bind its ports:\n{self.log_tail()}") from None
                _release_ports(self.ports)
            except BaseException:
                self._kill()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        env = dict(os.environ)
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = str(self.volumes_per_grow)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the server's lifetime)
        self._log.write(f"\n===== start {time.ctime()} ports={self.ports}\n".encode())
        self._log.flush()
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
        _live.add(self)

    def _wait_ready(self, timeout: float) -> None:
        """Ready = the S3 API answers ListBuckets and a probe object can be written and read."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        last: object = None
        client = self.client(timeout=2.0, attempts=1)
        for _ in range(int(timeout / 0.2) + 10):  # bounded in count as well as in time
            if self.proc.poll() is not None:
                break
            if self._log_has(b"address already in use"):
                raise _PortClash()
            try:
                client.list_buckets()
                try:
                    client.head_bucket(Bucket=PROBE_BUCKET)
                except ClientError:
                    client.create_bucket(Bucket=PROBE_BUCKET)
                body = os.urandom(16)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=body)
                if client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == body:
                    return
                last = "probe object read back wrong"
            except (BotoCoreError, ClientError, OSError) as e:
                last = e
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if self.proc.poll() is not None and self._log_has(b"address already in use"):
            raise _PortClash()
        rc = self.proc.poll()
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint} not ready after {timeout:.0f}s "
            f"(process {'exited with ' + str(rc) if rc is not None else 'still running'}; "
            f"last error: {last!r}). Log tail ({self.log_path}):\n{self.log_tail()}"
        )

    def _log_has(self, needle: bytes) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return needle in f.read()
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-20000:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (weed's graceful stop never ends)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None:
            for _ in range(2):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        # weed leaves unix sockets named after its ports in /tmp; a restart replaces them
        for port in self.ports.values():
            for q in (port, port + _GRPC_OFFSET):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{q}.sock"):
                    try:
                        sock.unlink()
                    except OSError:
                        pass

    def restart(self, timeout: float = 30.0) -> SeaweedS3:
        """Stop and start again on the same ports and the same data dir (objects survive)."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop for good and give the ports back."""
        self.stop()
        _release_ports(self.ports)
        _live.discard(self)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SeaweedS3({self.endpoint if self.ports else '-'}, {state}, {self.data_dir})"


class _PortClash(Exception):
    pass


@atexit.register
def _kill_all() -> None:
    for server in list(_live):
        try:
            server._kill()
        except Exception:
            pass
