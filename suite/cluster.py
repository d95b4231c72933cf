"""Cluster profiles (`slurm/profiles/<name>.toml`) and the few Slurm facts the suite asks the cluster.

A profile holds what differs between clusters: partition, GPUs, CPUs, memory, time limit, account/QoS,
array limits and setup lines. It turns into submitit's Slurm parameters in one place
(`slurm_parameters`), which both the real submission and `--dry-run` use.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parent.parent / "slurm" / "profiles"
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


class ClusterError(ValueError):
    """A missing or malformed profile, or a Slurm that is not there (one-line message)."""


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


def slurm_available() -> bool:
    """True where sbatch/squeue/scontrol are on PATH and the controller answers."""
    if not all(shutil.which(cmd) for cmd in ("sbatch", "squeue", "scontrol", "srun")):
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


def max_array_size(profile: Profile) -> int:
    """The profile's value, else the cluster's MaxArraySize, else Slurm's default (1001)."""
    if profile.max_array_size > 0:
        return profile.max_array_size
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10)
            for line in out.stdout.splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "MaxArraySize":
                    return int(value.strip())
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
    return DEFAULT_MAX_ARRAY_SIZE


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


def sbatch_preview(params: dict, folder: Path, array_size: int) -> str:
    """The sbatch script submitit would write for an array of `array_size` tasks (for --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = "python -u -m submitit.core._submit " + str(folder)
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)


def squeue_states(job_ids: set[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} from squeue for the given ids (array tasks as `A_i`); {} without Slurm.
    Never calls sacct, so it never blocks on accounting."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id in job_ids:
            states[job_id] = (state, reason)
    return states
