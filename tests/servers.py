"""Real servers for tests, on loopback and free ports chosen at run time: `mlflow server` (which a test may
stop, kill and start again on the same store and port) and PostgreSQL from Debian's packages."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a backend store and an artifact folder of the test's."""

    def __init__(self, home: Path, backend_uri: str | None = None, port: int | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)  # a clean CWD: uvicorn puts it on sys.path
        self.backend_uri = backend_uri or f"sqlite:///{self.home / 'mlflow.db'}"
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--workers", "2", "--backend-store-uri", self.backend_uri,
                                      "--artifacts-destination", str(self.home / "artifacts")],
                                     cwd=self.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log_tail()
            time.sleep(0.3)

    def log_tail(self) -> str:
        return (self.home / "server.log").read_text(errors="replace")[-3000:]

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server and its workers (what a crash does; also ends a frozen one)."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """At the end of a test: nothing of the server's state is needed any more."""
        self.kill()


class Postgres:
    """A PostgreSQL cluster of Debian's packages in a fresh temp folder (one the `postgres` user can reach:
    pytest's tmp_path is root-only), run as that user (so the test must run as root), on 127.0.0.1 and a
    free port, trust authentication on loopback only; stop() removes it."""

    def __init__(self):
        self.home = Path(tempfile.mkdtemp(prefix="twm-postgres-"))
        self.port = free_port()
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    @staticmethod
    def binaries() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        return Path(found[-1]).parent if found else None

    @staticmethod
    def skip_reason() -> str | None:
        """Why PostgreSQL cannot run here, or None."""
        if os.geteuid() != 0:
            return "needs root (PostgreSQL runs as the postgres user of Debian's package)"
        if Postgres.binaries() is None or shutil.which("runuser") is None:
            return "PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql as root)"
        return None

    def _as_postgres(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, text=True,
                              **kwargs)

    def start(self) -> Postgres:
        bin_dir = self.binaries()
        shutil.chown(self.home, "postgres")
        data = self.home / "data"
        self._as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        self._as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.home / "pg.log"), "-w",
                          "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.home} -c fsync=off",
                          "start", timeout=120)
        self._as_postgres(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "mlflow")
        return self

    def stop(self) -> None:
        if (self.home / "data" / "postmaster.pid").exists():
            self._as_postgres(str(self.binaries() / "pg_ctl"), "-D", str(self.home / "data"), "-m", "immediate",
                              "-w", "stop", timeout=60)
        shutil.rmtree(self.home, ignore_errors=True)
