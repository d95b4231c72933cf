"""What a grid will cost before it is launched: device-hours per run and in total, and the wall-clock at the
launch's parallelism.

The per-run figure comes from a throughput record for the launch's device (`results/benchmarks/
throughput_<cuda|cpu>.json`, written by benchmarks/throughput.py, field `metrics.projected_full_run_hours`)
when there is one, else from the paper (Appendix A.1: "roughly 10 hours on a single NVIDIA A100 GPU" per run,
training and evaluation; 15.5 hours with a vanilla transformer). Either is for the paper preset; runs that
share a GPU are assumed to split it evenly (packing gains are not measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from suite.grids import RunSpec
from twm.run_record import read_json

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"
PAPER_RUN_HOURS = 10.0  # Appendix A.1, one NVIDIA A100
PAPER_VANILLA_FACTOR = 15.5 / 10.0  # Appendix A.1: a vanilla transformer takes 15.5 h on the same GPU
COSTED_PRESET = "paper"


@dataclass(frozen=True)
class RunHours:
    """Hours of one run on one device, and where the figure comes from."""

    hours: float
    source: str


def run_hours(device_type: str, benchmarks_dir: Path = BENCHMARKS_DIR) -> RunHours:
    """One paper-preset run on `device_type` (cuda | cpu): the throughput record's projection, else the paper's."""
    path = benchmarks_dir / f"throughput_{device_type}.json"
    record = read_json(path) or {}
    hours = (record.get("metrics") or {}).get("projected_full_run_hours")
    if isinstance(hours, int | float) and hours > 0:
        made = ", ".join(str(record[k])[:12] for k in ("device", "commit", "timestamp") if record.get(k))
        return RunHours(float(hours), f"throughput record {path.name} (projected_full_run_hours; {made})")
    return RunHours(PAPER_RUN_HOURS, f"the paper's ~{PAPER_RUN_HOURS:g} h per run on one NVIDIA A100 (Appendix "
                                     f"A.1); no throughput record {path.name} in {benchmarks_dir}")


def _is_vanilla(spec: RunSpec) -> bool:
    return dict(spec.overrides).get("dyn.imagination_memory") == "vanilla"


def describe_cost(specs: list[RunSpec], device_type: str, devices_per_job: int, runs_per_job: int,
                  jobs_at_once: int, benchmarks_dir: Path = BENCHMARKS_DIR) -> list[str]:
    """The cost lines of a launch plan. `devices_per_job` GPUs are charged per job (0 on CPU: job-hours)."""
    if not specs:
        return ["cost: nothing to run"]
    presets = sorted({spec.preset for spec in specs})
    if presets != [COSTED_PRESET]:
        return [f"cost: no estimate for preset {', '.join(presets)} (the throughput records and the paper's "
                f"{PAPER_RUN_HOURS:g} A100-hours per run are for the {COSTED_PRESET} preset)"]
    base = run_hours(device_type, benchmarks_dir)
    per_run = [base.hours * (PAPER_VANILLA_FACTOR if _is_vanilla(spec) else 1.0) for spec in specs]
    jobs = [per_run[i:i + runs_per_job] for i in range(0, len(per_run), runs_per_job)]
    job_hours = [sum(job) for job in jobs]  # K runs sharing a GPU: K times as long
    unit, charge = ("GPU-h", max(1, devices_per_job)) if device_type == "cuda" else ("job-h on CPU", 1)
    waves = math.ceil(len(jobs) / max(1, jobs_at_once))
    wall = sum(sorted(job_hours, reverse=True)[::max(1, jobs_at_once)][:waves])  # longest job of each wave
    lines = [f"cost: {len(specs)} runs x {base.hours * charge:,.1f} {unit} per run = "
             f"{sum(job_hours) * charge:,.1f} {unit} in all; {len(jobs)} job(s), at most {jobs_at_once} at once: "
             f"about {wall:,.1f} h of wall-clock ({waves} wave(s))"]
    lines.append(f"  per-run figure from {base.source}")
    if any(_is_vanilla(spec) for spec in specs):
        lines.append(f"  vanilla-transformer runs count x{PAPER_VANILLA_FACTOR:g} (the paper: 15.5 h vs 10 h)")
    if runs_per_job > 1:
        lines.append(f"  {runs_per_job} runs share each job's GPU, assumed to split it evenly (not measured)")
    budget_keys = sorted({k for spec in specs for k, _ in spec.overrides if k.startswith(("schedule.", "buffer."))})
    if budget_keys:
        lines.append(f"  not accounted for: overrides of {', '.join(budget_keys)}")
    return lines
