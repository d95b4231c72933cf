"""`twm-suite launch`: plan a grid, check everything that can go wrong before anything starts, skip
finished and active runs, create the MLflow experiment, then hand the rest to an executor:
the local pool (default), Slurm job arrays through submitit, or submitit's in-process debug executor.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from suite.cluster import (
    ClusterError,
    Profile,
    load_profile,
    max_array_size,
    sbatch_preview,
    slurm_available,
    slurm_parameters,
    squeue_states,
)
from suite.grids import RunSpec, get_grid, plan
from suite.job import LaunchContext, RunJob, train_command
from suite.rundir import is_claimed, local_launcher_alive, record_submission
from suite.tracking import (
    done_run_keys,
    ensure_experiment,
    say_report,
    sync_runs,
    tracked,
    tracking_plan,
    ui_hint,
)
from twm.run_record import DONE, FAILED, SUBMITTED, read_json
from twm.tracking import TrackingError, check_tracking_uri, default_tracking_uri, is_server

EXECUTORS = ("local", "slurm", "debug")


class LaunchError(RuntimeError):
    """Anything found wrong before submission (one-line message)."""


@dataclass(frozen=True)
class LaunchOptions:
    grid: str
    games: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    variants: tuple[str, ...] | None = None
    overrides: dict[str, str] | None = None
    executor: str = "local"
    cluster: str = "default"
    dry_run: bool = False
    force: bool = False
    retry_failed: bool = False
    parallel: int = 0  # 0: default_parallel
    runs_per_gpu: int = 1
    runs_dir: Path = Path("twm-runs")
    tracking_uri: str = ""
    device: str = ""  # "": the profile's (slurm) or auto
    wait: bool = False  # slurm: block until every submitted job has ended


@dataclass(frozen=True)
class Selection:
    """The runs of a launch, split by what the launch does with them."""

    to_run: list[RunSpec]
    done: list[RunSpec]
    failed: list[RunSpec]
    active: list[RunSpec]  # claimed or queued by another launch


def git_commit() -> str:
    """The suite's git commit (with `-dirty` when the tree has changes), or `unknown`."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def check_writable(runs_dir: Path) -> None:
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = runs_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise LaunchError(f"output folder {runs_dir} is not writable: {err.strerror or err}") from None


def select(specs: list[RunSpec], runs_dir: Path, mlflow_done: set[str], force: bool, retry_failed: bool) -> Selection:
    """Idempotence: skip done runs (DONE marker or MLflow tag), failed runs (unless retried), and runs
    that a job holds or a queue still has; everything else runs (resuming from its checkpoints)."""
    queued_ids = {str((read_json(s.run_dir(runs_dir) / SUBMITTED) or {}).get("job_id")) for s in specs}
    queue = squeue_states(queued_ids)
    to_run, done, failed, active = [], [], [], []
    for spec in specs:
        run_dir = spec.run_dir(runs_dir)
        submitted = read_json(run_dir / SUBMITTED) or {}
        if is_claimed(run_dir) or str(submitted.get("job_id")) in queue or local_launcher_alive(submitted):
            active.append(spec)
        elif not force and ((run_dir / DONE).exists() or spec.key in mlflow_done):
            done.append(spec)
        elif not force and not retry_failed and (run_dir / FAILED).exists():
            failed.append(spec)
        else:
            to_run.append(spec)
    return Selection(to_run=to_run, done=done, failed=failed, active=active)


def reset_for_rerun(spec: RunSpec, runs_dir: Path, force: bool) -> None:
    """--force: keep the old run directory aside and start from scratch; --retry-failed: drop FAILED
    and resume from the last checkpoint."""
    run_dir = spec.run_dir(runs_dir)
    if force and run_dir.exists() and ((run_dir / DONE).exists() or (run_dir / FAILED).exists()):
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
    elif (run_dir / FAILED).exists():
        (run_dir / FAILED).unlink()


def launch(opts: LaunchOptions, say: Callable[[str], None] = print) -> int:
    """Run `twm-suite launch`; returns the process exit code. Raises LaunchError & co before submitting."""
    if opts.executor not in EXECUTORS:
        raise LaunchError(f"unknown executor {opts.executor!r}; executors: {', '.join(EXECUTORS)}")
    if opts.runs_per_gpu < 1 or opts.parallel < 0:
        raise LaunchError("--runs-per-gpu must be >= 1 and --parallel >= 1")
    grid = get_grid(opts.grid)
    specs = plan(grid, opts.games, opts.seeds, opts.variants, opts.overrides)
    profile = load_profile(opts.cluster) if opts.executor == "slurm" else None
    if profile is not None and not opts.dry_run and not slurm_available():
        raise LaunchError("--executor slurm: no Slurm here (sbatch/srun/squeue not on PATH or slurmctld not "
                          "answering 'scontrol ping'); use --executor local")
    runs_dir = opts.runs_dir.resolve()
    tracking_uri = opts.tracking_uri or (profile.tracking_uri if profile else "") or default_tracking_uri(runs_dir)
    device = opts.device or (profile.device if profile else "auto")
    tracking = tracking_plan(opts.executor, tracking_uri)

    if not opts.dry_run:
        check_writable(runs_dir)
        check_tracking_uri(tracking_uri)
        sync_before_launch(specs, runs_dir, tracking_uri, grid.name, say)
    mlflow_done = set() if opts.dry_run or opts.force else _mlflow_done(tracking_uri, grid.name)
    chosen = select(specs, runs_dir, mlflow_done, opts.force, opts.retry_failed)
    ctx = LaunchContext(runs_dir=runs_dir, tracking_uri=tracking_uri, experiment=grid.name,
                        executor=opts.executor, device=device, git_commit=git_commit(), offline=tracking.offline)
    say(f"grid {grid.name}: {len(specs)} runs; {len(chosen.to_run)} to run, {len(chosen.done)} done, "
        f"{len(chosen.failed)} failed (--retry-failed to resume them), {len(chosen.active)} queued or running")
    groups = [tuple(chosen.to_run[i:i + opts.runs_per_gpu])
              for i in range(0, len(chosen.to_run), opts.runs_per_gpu)]

    say(tracking.describe(grid.name))
    if opts.dry_run:
        _print_plan(chosen.to_run, ctx, say)
        if profile is not None:
            _print_slurm_plan(profile, grid.name, groups, runs_dir, opts.runs_per_gpu, say)
        say("dry run: nothing submitted")
        return 0
    if not chosen.to_run:
        say("nothing to submit")
        return 0

    ensure_experiment(tracking_uri, grid.name, runs_dir)
    for spec in chosen.to_run:
        reset_for_rerun(spec, runs_dir, opts.force)
    say(f"runs in {runs_dir / grid.name}; MLflow: {tracking_uri} (experiment {grid.name})")
    say(ui_hint(tracking_uri, grid.name))
    if opts.executor == "local":
        return _launch_local(chosen.to_run, ctx, opts, say)
    if opts.executor == "debug":
        return _launch_debug(groups, ctx, say)
    return _launch_slurm(groups, ctx, profile, opts, say)


def sync_before_launch(specs: list[RunSpec], runs_dir: Path, uri: str, grid: str, say: Callable[[str], None]) -> None:
    """Every relaunch first brings MLflow up to date from the runs that were started before (idempotent)."""
    run_dirs = tracked([spec.run_dir(runs_dir) for spec in specs])
    if run_dirs:
        ensure_experiment(uri, grid, runs_dir)
        say_report(sync_runs(run_dirs, uri, progress=False), uri, say)


def _mlflow_done(uri: str, experiment: str) -> set[str]:
    if not is_server(uri) and not Path(uri.removeprefix("sqlite:///")).exists():
        return set()
    try:
        return done_run_keys(uri, experiment)
    except Exception as err:  # a broken store must not hide the real error behind a traceback
        raise TrackingError(f"cannot read finished runs from {uri}: {str(err).splitlines()[0]}") from None


def _print_plan(specs: list[RunSpec], ctx: LaunchContext, say: Callable[[str], None]) -> None:
    for spec in specs:
        say(f"  {spec.key}  ->  {spec.run_dir(ctx.runs_dir)}")
    if specs:
        say("first command: " + " ".join(train_command(specs[0], ctx, "<job id>")))


def _array_chunks(groups: list[tuple[RunSpec, ...]], size: int) -> list[list[tuple[RunSpec, ...]]]:
    return [groups[i:i + size] for i in range(0, len(groups), size)]


def _job_name(grid: str, chunk: list[tuple[RunSpec, ...]]) -> str:
    if len(chunk) == 1 and len(chunk[0]) == 1:
        return chunk[0][0].job_name
    return f"twm:{grid}"


def _slurm_setup(runs_per_gpu: int) -> list[str]:
    """Lines before the runs start: unbuffered logs, and the job's CPUs split between its K trainers."""
    threads = f"$(( ${{SLURM_CPUS_PER_TASK:-{runs_per_gpu}}} / {runs_per_gpu} ))"
    return ["export PYTHONUNBUFFERED=1", f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}"]


def _print_slurm_plan(profile: Profile, grid: str, groups: list[tuple[RunSpec, ...]], runs_dir: Path,
                      runs_per_gpu: int, say: Callable[[str], None]) -> None:
    size = max_array_size(profile)
    chunks = _array_chunks(groups, size)
    say(f"slurm profile {profile.name}: {len(groups)} jobs ({runs_per_gpu} run(s) per job) in {len(chunks)} "
        f"array(s) (MaxArraySize {size})")
    folder = runs_dir / grid / ".submitit" / "%j"
    for i, chunk in enumerate(chunks):
        params = slurm_parameters(profile, _job_name(grid, chunk), _slurm_setup(runs_per_gpu))
        say(f"--- array {i + 1}/{len(chunks)}: {len(chunk)} tasks; sbatch parameters:")
        say(sbatch_preview(params, folder, len(chunk)))


def _launch_local(specs: list[RunSpec], ctx: LaunchContext, opts: LaunchOptions, say: Callable[[str], None]) -> int:
    from suite.local import default_parallel, run_pool, visible_gpus

    gpus = visible_gpus()
    parallel = opts.parallel or default_parallel(gpus, opts.runs_per_gpu)
    say(f"local pool: {parallel} at a time on {', '.join('GPU ' + g for g in gpus) if gpus else 'CPU'}; "
        f"logs in each run directory's train.log")
    for spec in specs:
        record_submission(spec.run_dir(ctx.runs_dir), f"local{os.getpid()}", "local")
    outcomes = run_pool(specs, ctx, parallel, gpus, say)
    return _report(outcomes, say)


def _launch_debug(groups: list[tuple[RunSpec, ...]], ctx: LaunchContext, say: Callable[[str], None]) -> int:
    import submitit

    executor = submitit.DebugExecutor(folder=ctx.runs_dir / ctx.experiment / ".submitit" / "debug")
    outcomes: dict[str, str] = {}
    for group in groups:
        job = executor.submit(RunJob(group, ctx))
        for spec in group:
            record_submission(spec.run_dir(ctx.runs_dir), job.job_id, "debug")
        outcomes.update(job.result())
    return _report(outcomes, say)


def _launch_slurm(groups: list[tuple[RunSpec, ...]], ctx: LaunchContext, profile: Profile, opts: LaunchOptions,
                  say: Callable[[str], None]) -> int:
    import submitit

    folder = ctx.runs_dir / ctx.experiment / ".submitit" / "%j"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_num_timeout)
    jobs = []
    log = ctx.runs_dir / ctx.experiment / ".submitit" / "launches.jsonl"
    for chunk in _array_chunks(groups, max_array_size(profile)):
        executor.update_parameters(**slurm_parameters(profile, _job_name(ctx.experiment, chunk),
                                                      _slurm_setup(opts.runs_per_gpu)))
        chunk_jobs = executor.submit_array([RunJob(group, ctx) for group in chunk])
        with log.open("a") as f:
            for group, job in zip(chunk, chunk_jobs, strict=True):
                for spec in group:
                    record_submission(spec.run_dir(ctx.runs_dir), job.job_id, "slurm")
                    f.write(json.dumps({"job_id": job.job_id, "run_key": spec.key, "time": time.time()}) + "\n")
        jobs += chunk_jobs
        say(f"submitted array {chunk_jobs[0].job_id.split('_')[0]} with {len(chunk_jobs)} tasks")
    say(f"follow with: twm-suite status {ctx.experiment} --runs-dir {ctx.runs_dir}")
    if not opts.wait:
        return 0
    outcomes: dict[str, str] = {}
    for job in jobs:
        try:
            outcomes.update(job.result())
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            say(f"job {job.job_id}: {str(err).strip().splitlines()[0]}")
            outcomes[job.job_id] = "failed"
    say_report(sync_runs(tracked([s.run_dir(ctx.runs_dir) for g in groups for s in g]), ctx.tracking_uri,
                         progress=False), ctx.tracking_uri, say)
    return _report(outcomes, say)


def _report(outcomes: dict[str, str], say: Callable[[str], None]) -> int:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    say("finished: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 1 if counts.get("failed") else 0


__all__ = ["EXECUTORS", "ClusterError", "LaunchError", "LaunchOptions", "TrackingError", "launch", "select"]
