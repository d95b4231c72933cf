"""`twm-suite launch`: plan a grid, check everything that can go wrong before anything starts, skip
finished and active runs, create the MLflow experiment, then hand the rest to an executor:
the local pool (default), Slurm job arrays through submitit, or submitit's in-process debug executor.

Exit codes: 0 every run of the selection is done (slurm without --wait: submitted); 1 a run failed;
2 bad input or an environment that cannot be used (nothing started); 3 the grid did not finish: the launch
was stopped (SIGINT/SIGTERM/SIGHUP: its trainers checkpointed) or runs were left to other trainers; relaunch
to resume.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from suite.cluster import (
    ClusterError,
    Profile,
    QueueUnreadableError,
    load_profile,
    max_array_size,
    slurm_available,
    slurm_executor,
    slurm_parameters,
    submission_script,
)
from suite.cost import describe_cost
from suite.grids import RunSpec, get_grid, plan
from suite.job import LaunchContext, RunJob, shell_command, train_command
from suite.rundir import local_launcher_alive, record_submission
from suite.status import read_queue
from suite.tracking import done_run_keys, ensure_experiment, say_report, sync_runs, tracked, tracking_plan
from twm.run_record import DONE, FAILED, SUBMITTED, lock_holder, read_json
from twm.tracking import TrackingError, check_tracking_uri, default_tracking_uri, is_server, ui_link

EXECUTORS = ("local", "slurm", "debug")
EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 3


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
    cluster: str | None = None  # slurm only; None: the `default` profile
    dry_run: bool = False
    force: bool = False
    retry_failed: bool = False
    parallel: int = 0  # local only; 0: default_parallel
    runs_per_gpu: int = 1
    runs_dir: Path = Path("twm-runs")
    tracking_uri: str = ""
    device: str = ""  # "": the profile's (slurm) or auto
    wait: bool = False  # slurm only: block until every submitted job has ended


@dataclass(frozen=True)
class Selection:
    """The runs of a launch, split by what the launch does with them."""

    to_run: list[RunSpec]  # the local pool waits for those of them a live trainer still holds
    done: list[RunSpec]
    failed: list[RunSpec]
    active: list[RunSpec]  # held by a live trainer, queued on Slurm, or queued by another live local launch
    held: list[RunSpec]  # of to_run: a live trainer holds the run lock now


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


def check_options(opts: LaunchOptions) -> None:
    """Options that do not apply to the chosen executor are errors, not silently ignored."""
    if opts.executor not in EXECUTORS:
        raise LaunchError(f"unknown executor {opts.executor!r}; executors: {', '.join(EXECUTORS)}")
    if opts.runs_per_gpu < 1 or opts.parallel < 0:
        raise LaunchError("--runs-per-gpu must be >= 1 and --parallel >= 1")
    only = {"--cluster": (opts.cluster is not None, "slurm"), "--wait": (opts.wait, "slurm"),
            "--parallel": (opts.parallel > 0, "local")}
    for flag, (given, executor) in only.items():
        if given and opts.executor != executor:
            raise LaunchError(f"{flag} applies to --executor {executor} only, not --executor {opts.executor}")
    if opts.force and opts.retry_failed:
        raise LaunchError("--force reruns failed runs from scratch; --retry-failed resumes them: choose one")


def select(specs: list[RunSpec], runs_dir: Path, mlflow_done: set[str], force: bool, retry_failed: bool,
           queue: dict[str, tuple[str, str]], wait_for_held: bool = False) -> Selection:
    """Idempotence: skip done runs (DONE marker or MLflow tag), failed runs (unless retried), and runs that a
    live trainer holds, a Slurm queue (`queue`: this user's squeue) or another live local launch still has;
    everything else runs, resuming from its checkpoints. With `wait_for_held` (the local pool), runs held by
    a live trainer are run once their trainer has gone, instead of skipped."""
    to_run, done, failed, active, held = [], [], [], [], []
    for spec in specs:
        run_dir = spec.run_dir(runs_dir)
        submitted = read_json(run_dir / SUBMITTED) or {}
        queued = submitted.get("executor") == "slurm" and str(submitted.get("job_id")) in queue
        if not force and ((run_dir / DONE).exists() or spec.key in mlflow_done):
            done.append(spec)
        elif lock_holder(run_dir) is not None and wait_for_held and not force:
            held.append(spec)
            to_run.append(spec)
        elif lock_holder(run_dir) is not None or queued or local_launcher_alive(submitted):
            active.append(spec)
        elif not force and not retry_failed and (run_dir / FAILED).exists():
            failed.append(spec)
        else:
            to_run.append(spec)
    return Selection(to_run=to_run, done=done, failed=failed, active=active, held=held)


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
    check_options(opts)
    grid = get_grid(opts.grid)
    specs = plan(grid, opts.games, opts.seeds, opts.variants, opts.overrides)
    profile = load_profile(opts.cluster or "default") if opts.executor == "slurm" else None
    if profile is not None and not opts.dry_run and not slurm_available():
        raise LaunchError("--executor slurm: no Slurm here (sbatch/srun/squeue not on PATH or slurmctld not "
                          "answering 'scontrol ping'); use --executor local")
    runs_dir = opts.runs_dir.resolve()
    tracking_uri = opts.tracking_uri or (profile.tracking_uri if profile else "") or default_tracking_uri(runs_dir)
    device = opts.device or (profile.device if profile else "auto")
    tracking = tracking_plan(opts.executor, tracking_uri)

    try:  # fail closed: a queued run that looks unqueued would be submitted twice
        queue = read_queue(specs, runs_dir, always=profile is not None)
    except QueueUnreadableError as err:
        if not opts.dry_run:
            raise LaunchError(f"{err}; nothing submitted") from None
        say(f"warning: {err}; a real launch would submit nothing")
        queue = {}
    if not opts.dry_run:
        check_writable(runs_dir)
        check_tracking_uri(tracking_uri)
        sync_before_launch(specs, runs_dir, tracking_uri, grid.name, say)
    mlflow_done = set() if opts.dry_run or opts.force else _mlflow_done(tracking_uri, grid.name)
    chosen = select(specs, runs_dir, mlflow_done, opts.force, opts.retry_failed, queue,
                    wait_for_held=opts.executor == "local")
    ctx = LaunchContext(runs_dir=runs_dir, tracking_uri=tracking_uri, experiment=grid.name,
                        executor=opts.executor, device=device, git_commit=git_commit(), offline=tracking.offline)
    held = f" ({len(chosen.held)} held by live trainers: waiting for them)" if chosen.held else ""
    say(f"grid {grid.name}: {len(specs)} runs; {len(chosen.to_run)} to run{held}, {len(chosen.done)} done, "
        f"{len(chosen.failed)} failed (--retry-failed to resume them), {len(chosen.active)} queued or running")
    groups = [tuple(chosen.to_run[i:i + opts.runs_per_gpu])
              for i in range(0, len(chosen.to_run), opts.runs_per_gpu)]

    say(tracking.describe(grid.name))
    if opts.dry_run:
        _print_plan(chosen.to_run, ctx, say)
        if profile is not None:
            _print_slurm_plan(profile, grid.name, groups, runs_dir, opts.runs_per_gpu, say)
        else:
            _print_local_cost(chosen.to_run, opts, say)
        say("dry run: nothing submitted")
        return EXIT_DONE
    experiment_id = None
    if not chosen.to_run:
        say("nothing to submit")
        code = EXIT_DONE
    else:
        experiment_id = ensure_experiment(tracking_uri, grid.name, runs_dir)
        for spec in chosen.to_run:
            if spec not in chosen.held:
                reset_for_rerun(spec, runs_dir, opts.force)
        say(f"runs in {runs_dir / grid.name}; MLflow: {tracking_uri} (experiment {grid.name})")
        if opts.executor == "local":
            code = _launch_local(chosen.to_run, ctx, opts, say)
        elif opts.executor == "debug":
            code = _launch_debug(groups, ctx, say)
        else:
            code = _launch_slurm(groups, ctx, profile, opts, say)
    for line in next_steps(grid.name, runs_dir, tracking_uri, opts, experiment_id):
        say(line)
    if code == EXIT_DONE and chosen.failed:
        return EXIT_FAILED
    if code == EXIT_DONE and chosen.active and (opts.executor != "slurm" or opts.wait):
        return EXIT_INTERRUPTED  # runs left to other trainers or launches: the grid did not finish here
    return code


def next_steps(grid: str, runs_dir: Path, tracking_uri: str, opts: LaunchOptions,
               experiment_id: str | None = None) -> list[str]:
    """The commands that follow a launch: its status, its report, and where to browse its MLflow runs."""
    selection = []
    for flag, value in (("--games", opts.games), ("--seeds", opts.seeds), ("--variants", opts.variants)):
        if value:
            selection += [flag, ",".join(map(str, value))]
    for key, value in (opts.overrides or {}).items():
        selection += ["--set", f"{key}={value}"]
    status = ["twm-suite", "status", grid, "--runs-dir", str(runs_dir), *selection]
    report = ["twm-suite", "report", grid, "--runs-dir", str(runs_dir), "--tracking-uri", tracking_uri]
    browse = (f"MLflow UI: {tracking_uri} (experiment {grid})" if is_server(tracking_uri) else
              "MLflow UI: " + shell_command(["mlflow", "ui", "--backend-store-uri", tracking_uri]))
    if experiment_id is not None:  # MLflow 3.17 opens an experiment on its GenAI overview without the parameter
        browse += f", then {ui_link(tracking_uri, experiment_id)}"
    return ["next:", "  " + shell_command(status), "  " + shell_command(report), "  " + browse]


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
        say(f"  {spec.key}  ->  {shlex.quote(str(spec.run_dir(ctx.runs_dir)))}")
    if specs:
        say("first command: " + shell_command(train_command(specs[0], ctx, "<job id>")))


def _print_local_cost(specs: list[RunSpec], opts: LaunchOptions, say: Callable[[str], None]) -> None:
    from suite.local import default_parallel, visible_gpus

    gpus = visible_gpus()
    on_gpu = opts.device.startswith("cuda") or (opts.device in ("", "auto") and bool(gpus))
    parallel = 1 if opts.executor == "debug" else opts.parallel or default_parallel(gpus, opts.runs_per_gpu)
    jobs_at_once = max(1, parallel // opts.runs_per_gpu)
    for line in describe_cost(specs, "cuda" if on_gpu else "cpu", 1 if on_gpu else 0, opts.runs_per_gpu,
                              jobs_at_once):
        say(line)


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


def _slurm_device_type(profile: Profile) -> str:
    if profile.device in ("cpu", "cuda"):
        return profile.device
    return "cuda" if profile.device.startswith("cuda") or profile.gpus_per_node else "cpu"


def _array_executor(profile: Profile, grid: str, chunk: list[tuple[RunSpec, ...]], runs_dir: Path,
                    runs_per_gpu: int, dry_run: bool):
    """The executor that submits one array chunk (the dry run prints what this one would submit)."""
    executor = slurm_executor(runs_dir / grid / ".submitit" / "%j", profile, dry_run=dry_run)
    executor.update_parameters(**slurm_parameters(profile, _job_name(grid, chunk), _slurm_setup(runs_per_gpu)))
    return executor


def _print_slurm_plan(profile: Profile, grid: str, groups: list[tuple[RunSpec, ...]], runs_dir: Path,
                      runs_per_gpu: int, say: Callable[[str], None]) -> None:
    size = max_array_size(profile)
    chunks = _array_chunks(groups, size.value)
    say(f"slurm profile {profile.name}: {len(groups)} jobs ({runs_per_gpu} run(s) per job) in {len(chunks)} "
        f"array(s) (MaxArraySize {size.value}, {size.source})")
    runs = [spec for group in groups for spec in group]
    device_type = _slurm_device_type(profile)
    jobs_at_once = min(profile.array_parallelism, size.value)
    for line in describe_cost(runs, device_type, profile.gpus_per_node, runs_per_gpu, jobs_at_once):
        say(line)
    for i, chunk in enumerate(chunks):
        executor = _array_executor(profile, grid, chunk, runs_dir, runs_per_gpu, dry_run=True)
        what = f"array of {len(chunk)} tasks" if len(chunk) > 1 else "single job"
        say(f"--- submission {i + 1}/{len(chunks)}: {what}; the sbatch script submitit submits:")
        say(submission_script(executor, len(chunk)).rstrip("\n"))


def _launch_local(specs: list[RunSpec], ctx: LaunchContext, opts: LaunchOptions, say: Callable[[str], None]) -> int:
    from suite.local import default_parallel, run_pool, visible_gpus

    gpus = visible_gpus()
    parallel = opts.parallel or default_parallel(gpus, opts.runs_per_gpu)
    say(f"local pool: {parallel} at a time on {', '.join('GPU ' + g for g in gpus) if gpus else 'CPU'}; "
        f"logs in each run directory's train.log; Ctrl-C (or SIGTERM/SIGHUP) checkpoints and stops every trainer")
    for spec in specs:
        record_submission(spec.run_dir(ctx.runs_dir), f"local{os.getpid()}", "local")
    result = run_pool(specs, ctx, parallel, gpus)
    return _report(result.outcomes, result.stopped_by, say)


def _launch_debug(groups: list[tuple[RunSpec, ...]], ctx: LaunchContext, say: Callable[[str], None]) -> int:
    import submitit

    executor = submitit.DebugExecutor(folder=ctx.runs_dir / ctx.experiment / ".submitit" / "debug")
    outcomes: dict[str, str] = {}
    for group in groups:
        if "interrupted" in outcomes.values():  # a stop signal reached the last job's trainers
            outcomes.update({spec.key: "not started" for spec in group})
            continue
        job = executor.submit(RunJob(group, ctx))
        for spec in group:
            record_submission(spec.run_dir(ctx.runs_dir), job.job_id, "debug")
        outcomes.update(job.result())
    return _report(outcomes, None, say)


def _launch_slurm(groups: list[tuple[RunSpec, ...]], ctx: LaunchContext, profile: Profile, opts: LaunchOptions,
                  say: Callable[[str], None]) -> int:
    jobs = []
    log = ctx.runs_dir / ctx.experiment / ".submitit" / "launches.jsonl"
    for chunk in _array_chunks(groups, max_array_size(profile).value):
        executor = _array_executor(profile, ctx.experiment, chunk, ctx.runs_dir, opts.runs_per_gpu, dry_run=False)
        chunk_jobs = executor.submit_array([RunJob(group, ctx) for group in chunk])
        _check_dry_run_script(executor, chunk_jobs, say)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            for group, job in zip(chunk, chunk_jobs, strict=True):
                for spec in group:
                    record_submission(spec.run_dir(ctx.runs_dir), job.job_id, "slurm")
                    f.write(json.dumps({"job_id": job.job_id, "run_key": spec.key, "time": time.time()}) + "\n")
        jobs += chunk_jobs
        first = chunk_jobs[0].job_id.split("_")[0]
        say(f"submitted array {first} with {len(chunk_jobs)} tasks" if len(chunk_jobs) > 1 else
            f"submitted job {first}")
    if not opts.wait:
        return EXIT_DONE
    return _wait_for_jobs(jobs, [spec for group in groups for spec in group], ctx, say)


def _check_dry_run_script(executor, jobs: list, say: Callable[[str], None]) -> None:
    """Say so if the script submitit just submitted is not the one `--dry-run` prints (another submitit?)."""
    from submitit.core.utils import JobPaths

    first = jobs[0].job_id.split("_")[0]
    submitted = JobPaths(executor.folder, job_id=first).submission_file
    if submitted.exists() and submitted.read_text() != submission_script(executor, len(jobs)):
        say(f"warning: {submitted} differs from the script --dry-run prints for it; please report this")


def _wait_for_jobs(jobs: list, specs: list[RunSpec], ctx: LaunchContext, say: Callable[[str], None]) -> int:
    """--wait: follow the grid's env steps until every job has ended; a stop signal stops the waiting only
    (the jobs are Slurm's, they keep running)."""
    import submitit

    from suite.job import StopSignals
    from suite.local import GridProgress

    with StopSignals() as stop, GridProgress(specs, ctx.runs_dir, ctx.experiment) as progress:
        while not all(job.done() for job in jobs):
            if stop.received:
                progress.write(f"{stop.received[0]}: stopped waiting; the jobs keep running on Slurm")
                return EXIT_INTERRUPTED
            progress.update()
            time.sleep(2.0)
        progress.update()
    outcomes: dict[str, str] = {}
    for job in jobs:
        try:
            outcomes.update(job.result())
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            say(f"job {job.job_id}: {str(err).strip().splitlines()[0]}")
            outcomes[job.job_id] = "failed"
    say_report(sync_runs(tracked([spec.run_dir(ctx.runs_dir) for spec in specs]), ctx.tracking_uri, progress=False),
               ctx.tracking_uri, say)
    return _report(outcomes, None, say)


def _report(outcomes: dict[str, str], stopped_by: str | None, say: Callable[[str], None]) -> int:
    """One line of outcomes; the exit code: 3 when stopped by a signal or a run did not finish, 1 when one failed."""
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    stopped = f"stopped by {stopped_by}; " if stopped_by else ""
    say(f"finished: {stopped}" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if stopped_by:
        return EXIT_INTERRUPTED
    if counts.get("failed"):
        return EXIT_FAILED
    return EXIT_DONE if set(counts) <= {"done"} else EXIT_INTERRUPTED


__all__ = ["EXECUTORS", "ClusterError", "LaunchError", "LaunchOptions", "TrackingError", "launch", "select"]
