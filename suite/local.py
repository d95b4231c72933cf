"""The embedded default executor: a bounded pool of at most N trainer subprocesses on this machine,
GPUs given round-robin through CUDA_VISIBLE_DEVICES. No cluster needed.

(submitit's LocalExecutor starts every job at once and pins all of them to GPU 0, so it is not used.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable

from tqdm import tqdm

from suite.grids import RunSpec
from suite.job import POLL_S, LaunchContext, RunningTrainer, finish_run, start_run


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def default_parallel(gpus: list[str], runs_per_gpu: int) -> int:
    """K runs per GPU with GPUs; on CPU half the cores (at least 2 where there are 2 cores, at most 8)."""
    if gpus:
        return len(gpus) * runs_per_gpu
    cores = os.cpu_count() or 1
    return min(cores, max(2, cores // 2), 8)


def run_pool(specs: list[RunSpec], ctx: LaunchContext, parallel: int, gpus: list[str],
             say: Callable[[str], None] = print) -> dict[str, str]:
    """Run every spec, at most `parallel` at a time; blocks until all have ended. Ctrl-C stops the
    trainers at their next iteration boundary with a checkpoint (they get the terminal's SIGINT)."""
    base_env = dict(os.environ)
    if not gpus:
        base_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    job_id = f"local{os.getpid()}"
    todo = list(specs)
    slots: dict[int, RunningTrainer] = {}
    outcomes: dict[str, str] = {}
    bar = tqdm(total=len(specs), desc=f"{ctx.experiment}: runs", unit="run", dynamic_ncols=True)
    try:
        while todo or slots:
            for slot in range(parallel):
                if slot in slots or not todo:
                    continue
                spec = todo.pop(0)
                env = dict(base_env)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                running = start_run(spec, ctx, job_id, env)
                if running is None:
                    outcomes[spec.key] = "busy"
                    bar.update()
                    continue
                slots[slot] = running
            time.sleep(POLL_S)
            for slot, running in list(slots.items()):
                if running.proc.poll() is not None:
                    outcomes[running.spec.key] = finish_run(running, ctx)
                    del slots[slot]
                    bar.update()
                    bar.set_postfix_str(_summary(outcomes))
    except KeyboardInterrupt:
        say("interrupted: waiting for the running trainers to write their checkpoints ...")
        for running in slots.values():
            while running.proc.poll() is None:
                try:
                    running.proc.wait()
                except KeyboardInterrupt:
                    running.proc.terminate()
            outcomes[running.spec.key] = finish_run(running, ctx)
        for spec in todo:
            outcomes.setdefault(spec.key, "not started")
    finally:
        bar.close()
    return outcomes


def _summary(outcomes: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
