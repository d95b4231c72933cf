"""Cluster profiles (`slurm/profiles/<name>.toml`) and the few Slurm facts the suite asks the cluster.

A profile holds what differs between clusters: partition, GPUs, CPUs, memory, time limit, account/QoS,
array limits and setup lines. It turns into submitit's Slurm parameters in one place
(`slurm_parameters`), and into one executor (`slurm_executor`) whose own submission text both the real
submission and `--dry-run` use. Every Slurm probe times out within a few seconds; when the queue cannot be
read, the suite fails closed (submits nothing) rather than guess.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import submitit

PROFILES_DIR = Path(__file__).resolve().parent.parent / "slurm" / "profiles"
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
PROBE_TIMEOUT_S = 5.0  # every squeue/scontrol call; a controller that does not answer by then is down


class ClusterError(ValueError):
    """A missing or malformed profile, or a Slurm that is not there (one-line message)."""


class QueueUnreadableError(ClusterError):
    """squeue failed or timed out: which jobs are queued is unknown, so nothing may be submitted."""


@dataclass(frozen=True)
class Profile:
    name: str
    partition: str = ""
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float = 32
    timeout_min: int = 1440
    signal_delay_s: int = 300
    max_num_timeout: int = 50
    account: str = ""
    qos: str = ""
    max_array_size: int = 0  # 0: ask scontrol
    array_parallelism: int = 64
    device: str = "auto"
    setup: tuple[str, ...] = ()
    tracking_uri: str = ""


def load_profile(name_or_path: str) -> Profile:
    """`--cluster NAME` (a file in slurm/profiles/) or `--cluster path/to/file.toml`."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise ClusterError(f"no cluster profile {name_or_path!r} ({path}); profiles: {', '.join(known)}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ClusterError(f"cluster profile {path}: {err}") from None
    valid = [f.name for f in fields(Profile) if f.name != "name"]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ClusterError(f"cluster profile {path}: unknown keys {', '.join(unknown)}; valid: {', '.join(valid)}")
    raw["setup"] = tuple(raw.get("setup", ()))
    profile = Profile(name=path.stem, **raw)
    if profile.timeout_min <= 0 or not 0 <= profile.signal_delay_s < profile.timeout_min * 60:
        raise ClusterError(f"cluster profile {path}: need timeout_min > 0 and signal_delay_s < timeout_min*60")
    return profile


_timed_out: subprocess.TimeoutExpired | None = None  # the probe that found the controller silent


def _probe(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a Slurm client command with the probe timeout; OSError/TimeoutExpired propagate. Once one probe has
    timed out, later ones fail at once with the same timeout (one wait per command, not one per probe)."""
    global _timed_out
    if _timed_out is not None:
        raise _timed_out
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        _timed_out = err
        raise


def _why(name: str, out: subprocess.CompletedProcess | None, err: Exception | None = None) -> str:
    """`squeue --me exited 1: <first stderr line>` / `squeue --me timed out after 5 s`, in one line."""
    if isinstance(err, subprocess.TimeoutExpired):
        asked = list(err.cmd)
        if asked[:len(name.split())] != name.split():  # an earlier probe timed out; this one was not run
            return f"{name} not asked: `{' '.join(asked[:2])}` timed out after {PROBE_TIMEOUT_S:.0f} s"
        return f"{name} timed out after {PROBE_TIMEOUT_S:.0f} s"
    if err is not None:
        return f"{name} failed: {err}"
    lines = [line.strip() for line in (out.stderr or out.stdout).splitlines() if line.strip()]
    return f"{name} exited {out.returncode}" + (f": {lines[0]}" if lines else "")


def slurm_available() -> bool:
    """True where sbatch/squeue/scontrol/srun are on PATH and the controller answers `scontrol ping`."""
    if not all(shutil.which(cmd) for cmd in ("sbatch", "squeue", "scontrol", "srun")):
        return False
    try:
        out = _probe(["scontrol", "ping"])
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


@dataclass(frozen=True)
class ArraySize:
    """The largest array to submit, and where that number came from."""

    value: int
    source: str  # "profile <name>", "scontrol show config", or "fallback: ..." (not read from the cluster)


def max_array_size(profile: Profile) -> ArraySize:
    """The profile's value, else the cluster's MaxArraySize, else Slurm's default 1001 labelled as a fallback."""
    if profile.max_array_size > 0:
        return ArraySize(profile.max_array_size, f"profile {profile.name}")
    name, fallback = "scontrol show config", "fallback: Slurm's default; "
    if not shutil.which("scontrol"):
        return ArraySize(DEFAULT_MAX_ARRAY_SIZE, fallback + "scontrol is not on PATH")
    try:
        out = _probe(name.split())
    except (OSError, subprocess.TimeoutExpired) as err:
        return ArraySize(DEFAULT_MAX_ARRAY_SIZE, fallback + _why(name, None, err))
    if out.returncode != 0:
        return ArraySize(DEFAULT_MAX_ARRAY_SIZE, fallback + _why(name, out))
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return ArraySize(int(value.strip()), name)
    return ArraySize(DEFAULT_MAX_ARRAY_SIZE, fallback + f"no MaxArraySize in {name}")


def slurm_parameters(profile: Profile, job_name: str, setup: list[str]) -> dict:
    """submitit SlurmExecutor parameters (sbatch names, no `slurm_` prefix): time limit always set,
    requeue on, USR2 `signal_delay_s` before the limit."""
    params: dict = {
        "job_name": job_name,
        "time": profile.timeout_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": profile.cpus_per_task,
        "mem": f"{int(profile.mem_gb * 1024)}MB",
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": profile.array_parallelism,
        "setup": list(profile.setup) + setup,
        "additional_parameters": {"requeue": True},
    }
    if profile.partition:
        params["partition"] = profile.partition
    if profile.gpus_per_node:
        params["gpus_per_node"] = profile.gpus_per_node
    if profile.account:
        params["account"] = profile.account
    if profile.qos:
        params["qos"] = profile.qos
    return params


class _DryRunSlurmExecutor(submitit.SlurmExecutor):
    """submitit's SlurmExecutor without its `srun` check, so a dry run shows the script where no Slurm is
    installed. It is never asked to submit."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def slurm_executor(folder: Path, profile: Profile, *, dry_run: bool = False) -> submitit.SlurmExecutor:
    """The submitit executor of a launch (the dry run's is the same but for the srun check)."""
    cls = _DryRunSlurmExecutor if dry_run else submitit.SlurmExecutor
    return cls(folder=folder, max_num_timeout=profile.max_num_timeout)


def submission_script(executor: submitit.SlurmExecutor, num_jobs: int) -> str:
    """The sbatch script that `executor.submit_array` of `num_jobs` jobs writes and passes to sbatch, made by
    submitit's own methods: one job is a plain submission, more are one array (`--array=0-N%P`) whose
    executor is a copy with `map_count` set (submitit 1.5's SlurmExecutor._internal_process_submissions)."""
    if num_jobs == 1:
        return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
    array = type(executor)(executor.folder, executor.max_num_timeout)
    array.update_parameters(**executor.parameters)
    array.parameters["map_count"] = num_jobs
    return array._make_submission_file_text(executor._submitit_command_str, "dry-run")


def squeue_states() -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of this user's queued and running jobs (array tasks as `A_i`). Raises
    QueueUnreadableError when squeue is missing, fails or times out. Never calls sacct."""
    cmd = ["squeue", "--me", "-h", "-r", "-o", "%i|%T|%r"]
    if not shutil.which("squeue"):
        raise QueueUnreadableError("cannot read the Slurm queue: squeue is not on PATH")
    try:
        out = _probe(cmd)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise QueueUnreadableError(f"cannot read the Slurm queue: {_why('squeue --me', None, err)}") from None
    if out.returncode != 0:
        raise QueueUnreadableError(f"cannot read the Slurm queue: {_why('squeue --me', out)}")
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id:
            states[job_id] = (state, reason)
    return states
