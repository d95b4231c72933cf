"""One prepared GPU evidence run (issue 14): in one call of at most 9 minutes on an H100/H200, from a machine
with only this repository, measure what only a GPU can show and write the records for results/benchmarks/.

Stages, each with its own time budget (a stage that overruns is stopped and the next one starts; every stage
rewrites the bundle, so a stopped run still leaves what it measured):
  install         use the machine's CUDA torch (no network there: nothing is downloaded); gymnasium and ale-py
                  from wheels carried in --wheels (see --fetch-wheels) into a private folder; twm from the tree
  cuda_tests      the CUDA-only tests (graph capture and replay against eager, no host syncs, compile parity,
                  the device replay sampler, device-resident acting)
  throughput_*    benchmarks/throughput.py at the paper's batch sizes for fp32, tf32, bf16, CUDA graphs and
                  compile, each with its drift against fp32, kernel launches and host syncs per iteration
  packing         aggregate iterations/s with 1, 2 and 4 runs packed on the GPU (one set of processes, windows)
  boxing          a paper-preset Boxing run for a fixed slice of wall-clock, stopped by SIGTERM, with a checkpoint
  extra_*         further variants (bf16+graphs, tf32+graphs) while time is left
Then a one-screen summary: projected full-run hours per variant against the goals (full run <= 1 h, world-model
training >= 150,000 samples/s, imagination >= 350,000 samples/s), and where the time goes when one is missed.

--out gets three files: gpu_evidence_bundle.json (every record), gpu_evidence_summary.json, gpu_evidence.log
(the device tool brings back at most 8 files); `--unpack BUNDLE` writes the bundle's records into
results/benchmarks/. `--tiny` runs every stage on the smoke preset with small budgets, also on a CPU (a check
of this script, not figures to report); `--dry-run` prints the plan and the record schema and does nothing.

Usage: python3 benchmarks/gpu_evidence.py --out DIR [--budget 540] [--stages a,b] [--wheels .whl] [--tiny]
       python3 benchmarks/gpu_evidence.py --dry-run [--out DIR]
       python  benchmarks/gpu_evidence.py --fetch-wheels .whl      (where pip can reach an index)
       python  benchmarks/gpu_evidence.py --unpack DIR/gpu_evidence_bundle.json [--into results/benchmarks]"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROG = "gpu_evidence"
DEFAULT_BUDGET_S = 540.0  # 9 minutes
BUNDLE, SUMMARY, LOG = "gpu_evidence_bundle.json", "gpu_evidence_summary.json", "gpu_evidence.log"
GOALS = {"projected_full_run_hours": 1.0, "wm_train_samples_per_s": 150_000, "imagination_samples_per_s": 350_000}
# Packages the twm trainer needs that the device image lacks (KINDS.md lists what it has), at the versions used here.
WHEELS = {"gymnasium": "1.4.0", "ale-py": "0.12.1", "farama-notifications": "0.0.6"}
WHEEL_PYTHON = "3.12"  # the device image's python3
CUDA_TEST_FILES = ("tests/test_perf_parity.py", "tests/test_static_shapes.py", "tests/test_sampling.py",
                   "tests/test_policy_device.py")
TORCH_RANGE = ((2, 5), (2, 14))  # pyproject's pin: torch>=2.5,<2.14

# Required keys of each record (dotted paths); CUDA records also carry the launch and sync counts.
THROUGHPUT_KEYS = ("variant", "device", "torch", "metrics.projected_full_run_hours", "metrics.wm_train_samples_per_s",
                   "metrics.imagination_samples_per_s", "metrics.train_iteration_ms",
                   "paper_size_iteration_ms_by_phase", "projected_run_hours_by_phase", "complete")
THROUGHPUT_CUDA_KEYS = ("metrics.kernel_launches_per_iteration", "metrics.gpu_kernels_per_iteration",
                        "metrics.host_syncs_per_iteration", "metrics.host_syncs_per_train_step")
DRIFT_KEYS = ("drift_against_fp32.world_model_pass", "drift_against_fp32.train_steps",
              "drift_against_fp32.within_limits")
PACKING_KEYS = ("variant", "device", "window_seconds", "aggregate_iterations_per_s", "per_run_iterations_per_s",
                "speedup_vs_one_run")
BOXING_KEYS = ("preset", "variant", "device", "slice_s", "phase_reached", "env_steps", "updates", "checkpoints",
               "prefill_env_steps_per_s")
TESTS_KEYS = ("passed", "failed", "skipped", "tests")
SUMMARY_KEYS = ("device", "torch", "stages", "variants", "best_variant", "projected_full_run_hours", "goals",
                "where_the_time_goes")


class UsageError(Exception):
    """Bad command-line input (one line, exit code 2)."""


# ------------------------------------------------------------------------------------ records
def dig(record: dict, path: str) -> object:
    value: object = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def missing_keys(record: dict, keys: tuple[str, ...]) -> list[str]:
    """The dotted keys of `keys` that `record` lacks."""
    missing = []
    for key in keys:
        try:
            dig(record, key)
        except KeyError:
            missing.append(key)
    return missing


def record_keys(name: str, cuda: bool, variant: str | None = None) -> tuple[str, ...]:
    """The schema of a record by its file name (throughput records: also by variant; drift for all but fp32)."""
    if name.startswith("throughput_"):
        return THROUGHPUT_KEYS + (THROUGHPUT_CUDA_KEYS if cuda else ()) + (() if variant == "fp32" else DRIFT_KEYS)
    if name.startswith("packing_"):
        return PACKING_KEYS
    if name.startswith("boxing_run_"):
        return BOXING_KEYS
    if name.startswith("cuda_tests_"):
        return TESTS_KEYS
    if name.startswith("gpu_evidence_"):
        return SUMMARY_KEYS
    raise ValueError(f"no schema for record {name!r}")


def write_json(path: Path, data: dict) -> None:
    """Atomic write (temp file + rename): a stopped run never leaves half a record."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ context
@dataclass
class Context:
    """What the stages share: arguments, folders, the subprocess environment, the bundle and the clock."""

    args: argparse.Namespace
    out: Path
    work: Path
    started: float
    deadline: float
    env: dict[str, str] = field(default_factory=dict)
    probe: dict = field(default_factory=dict)  # the install stage's findings
    records: dict[str, dict] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cuda" if self.probe.get("cuda") else "cpu"

    def log(self, message: str, screen: bool = True) -> None:
        line = f"[{time.monotonic() - self.started:6.0f}s] {message}"
        if screen:
            print(line, flush=True)
        with open(self.out / LOG, "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        summary = summarize(self)
        self.records[summary_name(self.device)] = summary
        write_json(self.out / SUMMARY, summary)
        write_json(self.out / BUNDLE, {"format": 1, "written": now(), "records": self.records,
                                       "stages": self.stages})

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def summary_name(device: str) -> str:
    return f"gpu_evidence_{device}.json"


def run_process(ctx: Context, cmd: list[str], limit: float, on_line: Callable[[str], None] | None = None,
                stop_after: float | None = None, grace: float = 30.0) -> tuple[int | None, bool, str]:
    """Run cmd (its output into the log) for at most `limit` seconds, its whole process group killed after that.
    With stop_after, SIGTERM is sent at that many seconds and the process gets `grace` more to finish.
    Returns (exit code, or None when killed; killed; its last lines of output)."""
    ctx.log("$ " + " ".join(cmd), screen=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            ctx.log("  | " + line.rstrip(), screen=False)
            tail.append(line.rstrip())
            del tail[:-15]
            if on_line:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    begin, killed, termed = time.monotonic(), False, False
    while proc.poll() is None:
        elapsed = time.monotonic() - begin
        if stop_after is not None and not termed and elapsed >= stop_after:
            os.killpg(proc.pid, signal.SIGTERM)
            termed, limit = True, min(limit, elapsed + grace)
        if elapsed >= limit:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            proc.wait()
            break
        time.sleep(0.1)
    reader.join(timeout=5)
    return (None if killed else proc.returncode), killed, "\n".join(tail)


# ------------------------------------------------------------------------------------ stages
PROBE = r"""
import importlib, json, sys
found = {"python": sys.version.split()[0]}
try:
    import torch
    found.update(torch=torch.__version__, cuda=torch.cuda.is_available(), cuda_version=torch.version.cuda)
    if found["cuda"]:
        found["gpu"] = torch.cuda.get_device_name(0)
        found["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
except Exception as err:
    found["torch_error"] = f"{type(err).__name__}: {err}"
for name in ("numpy", "gymnasium", "ale_py", "cv2", "tqdm", "pytest", "scipy", "twm.agent"):
    try:
        module = importlib.import_module(name)
        found[name] = getattr(module, "__version__", "present")
    except Exception as err:
        found[name] = None
        found[name + "_error"] = f"{type(err).__name__}: {err}"[:200]
print("PROBE " + json.dumps(found))
"""


def probe(ctx: Context, limit: float) -> dict:
    found: dict = {}

    def grab(line: str) -> None:
        if line.startswith("PROBE "):
            found.update(json.loads(line[6:]))

    run_process(ctx, ctx.python("-c", PROBE), limit, grab)
    return found


def torch_in_range(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return bool(match) and TORCH_RANGE[0] <= (int(match[1]), int(match[2])) < TORCH_RANGE[1]


def stage_install(ctx: Context, limit: float) -> dict:
    """The machine's torch must be a CUDA build in the pin's range (none can be fetched: the device has no
    network, and a CUDA torch wheel is far over what one call carries); the trainer's env packages come from
    carried wheels when missing; twm runs from the tree (PYTHONPATH), so nothing needs building."""
    site = ctx.work / "site"
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    found = probe(ctx, limit / 3)
    notes = []
    if not found.get("gymnasium") or not found.get("ale_py"):
        wheels = sorted(Path(ctx.args.wheels).glob("*.whl")) if ctx.args.wheels else []
        if wheels:
            cmd = ctx.python("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                             "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels))
            rc, _, tail = run_process(ctx, cmd, limit / 3)
            notes.append(f"installed {len(wheels)} wheels from {ctx.args.wheels} into {site}" if rc == 0 else
                         f"wheel install failed: {tail.splitlines()[-1] if tail else rc}")
            found = probe(ctx, limit / 3)
        else:
            notes.append(f"gymnasium/ale-py missing and no wheels in {ctx.args.wheels!r}: the env timing uses the "
                         "CPU record, the policy random frames, and the Boxing run is skipped (fetch them with "
                         "--fetch-wheels .whl where pip works, and carry .whl)")
    ctx.probe = found
    ok = bool(found.get("torch")) and torch_in_range(found["torch"]) and found.get("twm.agent")
    if not found.get("torch"):
        raise StageError(f"install impossible: torch does not import ({found.get('torch_error')}); this script "
                         "uses the machine's own CUDA build of torch, which cannot be downloaded there")
    if not torch_in_range(found["torch"]):
        notes.append(f"torch {found['torch']} is outside the project's pin torch>=2.5,<2.14")
    if not found.get("cuda") and not ctx.args.tiny:
        raise StageError(f"install impossible: torch {found['torch']} sees no CUDA device (use --tiny for a CPU "
                         "check of this script)")
    if not found.get("twm.agent"):
        raise StageError(f"twm does not import from {ROOT}: {found.get('twm.agent_error')}")
    gpu = f"{found.get('gpu')} ({found.get('gpu_memory_gib')} GiB), CUDA {found.get('cuda_version')}" \
        if found.get("cuda") else "no CUDA device (CPU)"
    notes.insert(0, f"python {found['python']}, torch {found['torch']}, {gpu}; gymnasium {found.get('gymnasium')}, "
                    f"ale-py {found.get('ale_py')}")
    return {"status": "ok" if ok else "warning", "note": "; ".join(notes)}


class StageError(RuntimeError):
    """A stage that cannot run (one line for the summary)."""


def stage_cuda_tests(ctx: Context, limit: float) -> dict:
    if not ctx.probe.get("pytest"):
        raise StageError("pytest is not installed")
    xml = ctx.work / "cuda_tests.xml"
    cmd = ctx.python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", f"--junitxml={xml}",
                     *CUDA_TEST_FILES)
    rc, killed, tail = run_process(ctx, cmd, limit)
    record = {"device": ctx.probe.get("gpu", "cpu"), "torch": ctx.probe.get("torch"), "files": list(CUDA_TEST_FILES),
              "selection": "-k cuda", "exit_code": rc, "stopped_at_budget": killed, "written": now()}
    record.update(junit_results(xml) if xml.exists() else {"passed": 0, "failed": 0, "skipped": 0, "tests": {}})
    ctx.records[f"cuda_tests_{ctx.device}.json"] = record
    status = "timeout" if killed else "ok" if rc == 0 else "failed"
    return {"status": status, "note": f"{record['passed']} passed, {record['failed']} failed, {record['skipped']} "
                                      f"skipped" + ("" if rc in (0, None) else f"; {tail.splitlines()[-1]}")}


def junit_results(path: Path) -> dict:
    """Outcome per test (and the first line of a failure) from a pytest junit XML file."""
    tests, counts = {}, {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                text = (child.get("message") or child.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
        counts[outcome] += 1
        tests[name] = {"outcome": outcome, **({"message": message} if message else {})}
    return counts | {"tests": tests}


def throughput_name(device: str, tiny: bool, variant: str) -> str:
    """throughput_<device>.json for fp32 at the paper's sizes, throughput_<device>_<variant>.json otherwise."""
    tag = variant.replace("+", "-")
    if tiny:
        return f"throughput_{device}_smoke-{tag}.json"
    return f"throughput_{device}.json" if variant == "fp32" else f"throughput_{device}_{tag}.json"


def throughput_stage(variant: str) -> Callable[[Context, float], dict]:
    def stage(ctx: Context, limit: float) -> dict:
        if "compile" in variant and ctx.device != "cuda":
            return {"status": "skipped", "note": "runtime.compile needs CUDA"}
        name = throughput_name(ctx.device, ctx.args.tiny, variant)
        path = ctx.work / name
        path.unlink(missing_ok=True)
        cmd = ctx.python("benchmarks/throughput.py", "--variant", variant, "--record", str(path))
        if ctx.args.tiny:
            cmd += ["--preset", "smoke", "--buffer-size", "5001", "--reps", "2"]
        rc, killed, tail = run_process(ctx, cmd, limit)
        if path.exists():
            ctx.records[name] = json.loads(path.read_text())
        record = ctx.records.get(name)
        if record is None:
            raise StageError(f"no record ({'stopped at its budget' if killed else f'exit {rc}'}): "
                             f"{tail.splitlines()[-1] if tail else ''}")
        m = record.get("metrics", {})
        note = (f"{m.get('projected_full_run_hours')} h projected, WM {m.get('wm_train_samples_per_s')}/s, "
                f"imagination {m.get('imagination_samples_per_s')}/s")
        if not record.get("complete"):
            return {"status": "partial", "note": note + ("; stopped at its budget" if killed else f"; exit {rc}")}
        return {"status": "ok" if rc == 0 else "failed", "note": note}

    return stage


def chosen_variant(ctx: Context) -> str:
    """The variant with the shortest projected run among the complete throughput records within their drift
    limits (fp32 has none); fp32 when none is there."""
    best, hours = "fp32", float("inf")
    for record in ctx.records.values():
        if not record.get("benchmark", "").startswith("TWM training throughput") or not record.get("complete"):
            continue
        drift_ok = record.get("drift_against_fp32", {}).get("within_limits", record.get("variant") == "fp32")
        h = record.get("metrics", {}).get("projected_full_run_hours", float("inf"))
        if drift_ok and h < hours:
            best, hours = record["variant"], h
    return best


def stage_packing(ctx: Context, limit: float) -> dict:
    """Four worker processes; window i has the first sizes[i] of them looping whole iterations, the rest idle."""
    sizes, window = [1, 2, 4], 2.0 if ctx.args.tiny else 8.0
    variant = chosen_variant(ctx)
    startup = min(limit * 0.45, 60.0 if ctx.args.tiny else 30.0)
    start_at = time.time() + startup
    procs, results = [], []
    common = ["benchmarks/throughput.py", "--variant", variant, "--loop-seconds", str(window), "--start-at",
              f"{start_at:.3f}", "--pack-sizes", ",".join(map(str, sizes)), "--buffer-size", "20000"]
    if ctx.args.tiny:
        common += ["--preset", "smoke", "--buffer-size", "5001"]
    for rank in range(max(sizes)):
        cmd = ctx.python(*common, "--pack-rank", str(rank))
        ctx.log("$ " + " ".join(cmd), screen=False)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    begin = time.monotonic()
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, limit - (time.monotonic() - begin)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        for line in output.splitlines():
            ctx.log("  | " + line, screen=False)
            if line.startswith("PACK_RESULT "):
                results.append(json.loads(line[12:]))
    if not results:
        raise StageError("no packing worker reported (see the log)")
    aggregate, per_run = {}, {}
    for size in sizes:
        rates = [w["iterations"] / w["seconds"] for r in results for w in r["windows"] if w["runs"] == size]
        if len(rates) == size:
            aggregate[str(size)] = round(sum(rates), 2)
            per_run[str(size)] = [round(r, 2) for r in rates]
    one = aggregate.get("1")
    record = {"benchmark": "runs packed on one GPU: aggregate whole iterations per second", "variant": variant,
              "device": ctx.probe.get("gpu", "cpu"), "torch": ctx.probe.get("torch"), "preset":
              "smoke" if ctx.args.tiny else "paper", "window_seconds": window, "workers": len(procs),
              "late_workers": sum(r["late"] for r in results), "aggregate_iterations_per_s": aggregate,
              "per_run_iterations_per_s": per_run,
              "speedup_vs_one_run": {k: round(v / one, 2) for k, v in aggregate.items()} if one else {},
              "method": ("four processes of benchmarks/throughput.py (device replay sampler, gather, train step, one "
                         "metric fetch per iteration); window i of each lasts window_seconds and has the first "
                         f"{sizes} processes looping while the others sleep; no MPS"),
              "written": now()}
    ctx.records[f"packing_{ctx.device}.json"] = record
    complete = len(aggregate) == len(sizes)
    return {"status": "ok" if complete else "partial",
            "note": f"{variant}: " + ", ".join(f"{k} runs {v} it/s" for k, v in aggregate.items())}


def stage_boxing(ctx: Context, limit: float) -> dict:
    if not ctx.probe.get("ale_py") or not ctx.probe.get("gymnasium"):
        return {"status": "skipped", "note": "gymnasium/ale-py not installed (carry wheels: --fetch-wheels)"}
    variant = chosen_variant(ctx)
    run_dir = ctx.work / "boxing"
    slice_s = max(10.0, limit - (40.0 if ctx.args.tiny else 30.0))
    cmd = ctx.python("benchmarks/gpu_evidence.py", "--boxing-worker", str(run_dir), "--variant", variant,
                     "--preset", "smoke" if ctx.args.tiny else "paper")
    rc, killed, tail = run_process(ctx, cmd, limit, stop_after=slice_s, grace=max(5.0, limit - slice_s))
    result_path = run_dir / "boxing_result.json"
    if not result_path.exists():
        raise StageError(f"the Boxing run left no result ({'killed' if killed else f'exit {rc}'}): "
                         f"{tail.splitlines()[-1] if tail else ''}")
    result = json.loads(result_path.read_text())
    result.update(slice_s=slice_s, exit_code=rc, variant=variant, device=ctx.probe.get("gpu", "cpu"),
                  torch=ctx.probe.get("torch"), written=now())
    ctx.records[f"boxing_run_{ctx.device}.json"] = result
    saved = result["checkpoints"]
    note = (f"{variant}: {result['phase_reached']} after {result['wall_s']:.0f} s, {result['updates']} updates, "
            + (f"checkpoint {saved[-1]['bytes'] / 2**20:.0f} MiB in {saved[-1]['seconds']:.1f} s" if saved
               else "no checkpoint"))
    return {"status": "ok" if rc == 3 and saved else "failed", "note": note}


def boxing_worker(run_dir: Path, preset_name: str, variant: str) -> int:
    """The paper-preset (or smoke) Boxing run until SIGTERM: the trainer checkpoints at its next safe point and
    stops; writes boxing_result.json with the phase reached, the updates, the prefill rate and the checkpoint."""
    import torch
    from throughput import variant_overrides

    from twm.checkpoint import list_checkpoints
    from twm.config import preset
    from twm.train import StopRequested, Trainer

    class TimedTrainer(Trainer):
        def prefill(self) -> None:
            start = time.monotonic()
            super().prefill()
            self.prefill_s = time.monotonic() - start
            self.pretrain_started = time.monotonic()

        def checkpoint(self) -> None:
            start = time.monotonic()
            super().checkpoint()
            path = list_checkpoints(self.run_dir)[-1]
            self.saved.append({"seconds": round(time.monotonic() - start, 3), "bytes": path.stat().st_size,
                               "phase": self.state.phase, "env_step": self.buffer.size})

    config = preset(preset_name).with_overrides(variant_overrides(variant))
    trainer = TimedTrainer(config, "Boxing", 0, run_dir, None, progress=False)
    trainer.saved, trainer.prefill_s, trainer.pretrain_started = [], None, None
    signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop())
    started = time.monotonic()
    stopped = "finished"
    try:
        trainer.run()
    except StopRequested as err:
        stopped = str(err)
    wall = time.monotonic() - started
    budget, state = trainer.budget, trainer.state
    totals = {"pretrain_obs": budget.obs_pretrain, "pretrain_dyn": budget.dyn_pretrain,
              "pretrain_ac": budget.ac_pretrain}
    result = {"preset": preset_name, "game": "Boxing", "seed": 0, "phase_reached": state.phase,
              "env_steps": trainer.buffer.size, "updates": state.updates, "train_steps": state.train_steps,
              "wall_s": round(wall, 2), "stopped": stopped, "checkpoints": trainer.saved,
              "prefill_s": trainer.prefill_s,
              "prefill_env_steps_per_s": round(config.buffer.prefill / trainer.prefill_s, 1) if trainer.prefill_s
              else None,
              "gpu_max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
              if torch.cuda.is_available() else None}
    if state.phase == "pretrain_obs" and trainer.pretrain_started is not None:
        done = totals["pretrain_obs"] - state.budget_left
        seconds = time.monotonic() - trainer.pretrain_started - sum(c["seconds"] for c in trainer.saved[1:])
        rate = done / seconds if seconds > 0 else None
        result.update(pretrain_obs_samples=done, pretrain_obs_samples_per_s=round(rate, 1) if rate else None,
                      projected_pretrain_obs_hours=round(totals["pretrain_obs"] / rate / 3600, 3) if rate else None)
    write_json(run_dir / "boxing_result.json", result)
    return 3 if stopped != "finished" else 0


# ------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float  # at the default total budget; scaled with --budget
    does: str
    run: Callable[[Context, float], dict]
    needs_cuda: bool = False
    optional: bool = False  # only while time is left after the others


STAGES = (
    Stage("install", 30, "probe torch/CUDA, install carried wheels (gymnasium, ale-py), check twm imports",
          stage_install),
    Stage("cuda_tests", 60, f"pytest -k cuda {' '.join(CUDA_TEST_FILES)}", stage_cuda_tests),
    Stage("throughput_fp32", 70, "throughput.py --variant fp32 (+ layer-input and vanilla imagination)",
          throughput_stage("fp32")),
    Stage("throughput_tf32", 35, "throughput.py --variant tf32 (drift vs fp32)", throughput_stage("tf32")),
    Stage("throughput_bf16", 40, "throughput.py --variant bf16 (drift vs fp32)", throughput_stage("bf16")),
    Stage("throughput_graphs", 55, "throughput.py --variant graphs (static imagination + CUDA graphs)",
          throughput_stage("graphs")),
    Stage("throughput_compile", 75, "throughput.py --variant compile+static (torch.compile on static shapes)",
          throughput_stage("compile+static"), needs_cuda=True),
    Stage("packing", 70, "1, 2 and 4 runs packed: aggregate iterations/s (the best variant so far)", stage_packing),
    Stage("boxing", 70, "paper-preset Boxing run for a slice of wall-clock, SIGTERM, checkpoint", stage_boxing),
    Stage("extra_bf16_graphs", 45, "throughput.py --variant bf16+graphs", throughput_stage("bf16+graphs"),
          optional=True),
    Stage("extra_tf32_graphs", 45, "throughput.py --variant tf32+graphs", throughput_stage("tf32+graphs"),
          optional=True),
)
SUMMARY_RESERVE_S = 10.0


def scaled_budgets(total: float) -> dict[str, float]:
    """Each stage's budget: its share of the default 540 s, scaled to `total`."""
    return {s.name: round(s.budget_s * total / DEFAULT_BUDGET_S, 1) for s in STAGES}


def selected(args: argparse.Namespace) -> list[Stage]:
    if not args.stages:
        return list(STAGES)
    names = args.stages.split(",")
    return [s for s in STAGES if s.name in names or (s.name == "install")]


def print_plan(args: argparse.Namespace) -> None:
    budgets = scaled_budgets(args.budget)
    print(f"{PROG}: plan for a {args.budget:.0f} s budget ({'tiny: smoke preset' if args.tiny else 'paper preset'})")
    print(f"{'stage':<20}{'budget s':>9}  what")
    for stage in selected(args):
        flag = " (if time is left)" if stage.optional else ""
        print(f"{stage.name:<20}{budgets[stage.name]:>9.0f}  {stage.does}{flag}")
    core = sum(budgets[s.name] for s in selected(args) if not s.optional)
    print(f"{'core stages':<20}{core:>9.0f}  + {SUMMARY_RESERVE_S:.0f} s summary; optional ones use what is left")
    device = "cpu" if args.tiny else "cuda"
    print(f"\nrecords (in {args.out or 'DIR'}/{BUNDLE}; `--unpack` writes them to results/benchmarks/), with "
          "their required keys:")
    variants = ("fp32", "tf32", "bf16", "graphs", "compile+static", "bf16+graphs", "tf32+graphs")
    names = [throughput_name(device, args.tiny, v) for v in variants]
    print(f"  {', '.join(names)}:\n    {', '.join(THROUGHPUT_KEYS)}")
    if device == "cuda":
        print(f"    on CUDA also {', '.join(THROUGHPUT_CUDA_KEYS)}")
    print(f"    all but fp32 also {', '.join(DRIFT_KEYS)}")
    for name in (f"cuda_tests_{device}.json", f"packing_{device}.json", f"boxing_run_{device}.json",
                 summary_name(device)):
        print(f"  {name}: {', '.join(record_keys(name, device == 'cuda'))}")
    print(f"\ngoals: full run <= {GOALS['projected_full_run_hours']} h; world-model training >= "
          f"{GOALS['wm_train_samples_per_s']:,} samples/s; imagination >= {GOALS['imagination_samples_per_s']:,} "
          "samples/s")
    ctx = Context(args, Path(args.out or "."), Path("."), time.monotonic(), time.monotonic() + args.budget)
    empty = summarize(ctx)  # the summary code path on no records, checked against its own schema
    missing = missing_keys(empty, SUMMARY_KEYS)
    if missing:
        raise RuntimeError(f"summary lacks {missing}")
    print(f"summary of an empty run: best variant {empty['best_variant']}, schema ok")


# ------------------------------------------------------------------------------------ summary
def summarize(ctx: Context) -> dict:
    """Projected hours and goals per variant, the best variant within its drift limits, where its time goes."""
    variants = {}
    for name, record in ctx.records.items():  # in stage order
        if not name.startswith("throughput_"):
            continue
        m = record.get("metrics", {})
        drift = record.get("drift_against_fp32", {})
        variants[record.get("variant", name)] = {
            "record": name, "complete": record.get("complete", False),
            "projected_full_run_hours": m.get("projected_full_run_hours"),
            "wm_train_samples_per_s": m.get("wm_train_samples_per_s"),
            "imagination_samples_per_s": m.get("imagination_samples_per_s"),
            "train_iteration_ms": m.get("train_iteration_ms"),
            "kernel_launches_per_iteration": m.get("kernel_launches_per_iteration"),
            "gpu_kernels_per_iteration": m.get("gpu_kernels_per_iteration"),
            "host_syncs_per_iteration": m.get("host_syncs_per_iteration"),
            "drift_within_limits": drift.get("within_limits", None if record.get("variant") != "fp32" else True),
            "missing": missing_keys(record, record_keys(name, ctx.device == "cuda", record.get("variant")))}
    best = chosen_variant(ctx)
    best_record = next((r for r in ctx.records.values() if r.get("variant") == best and "metrics" in r
                        and r.get("benchmark", "").startswith("TWM training throughput")), None)
    goals, where = {}, []
    if best_record:
        m = best_record["metrics"]
        goals = {key: {"goal": goal, "value": m.get(key),
                       "met": m.get(key) is not None and (m[key] <= goal if key == "projected_full_run_hours"
                                                          else m[key] >= goal)}
                 for key, goal in GOALS.items()}
        if not all(g["met"] for g in goals.values()):
            where = where_the_time_goes(best_record, goals)
    return {"benchmark": "GPU evidence (benchmarks/gpu_evidence.py)", "device": ctx.probe.get("gpu", "cpu"),
            "torch": ctx.probe.get("torch"), "commit": os.environ.get("TWM_COMMIT") or git_commit(),
            "tiny": ctx.args.tiny, "budget_s": ctx.args.budget,
            "elapsed_s": round(time.monotonic() - ctx.started, 1), "stages": ctx.stages, "variants": variants,
            "best_variant": best, "projected_full_run_hours":
            best_record["metrics"].get("projected_full_run_hours") if best_record else None,
            "goals": goals, "where_the_time_goes": where, "written": now()}


def where_the_time_goes(record: dict, goals: dict) -> list[str]:
    """Plain sentences naming the largest costs behind each missed goal."""
    lines = []
    m = record.get("metrics", {})
    hours = record.get("projected_run_hours_by_phase", {})
    iteration = record.get("paper_size_iteration_ms_by_phase", {})
    if not goals["projected_full_run_hours"]["met"]:
        total = sum(hours.values()) or 1.0
        lines.append("run hours: " + ", ".join(f"{k} {v:.2f} h ({100 * v / total:.0f}%)" for k, v in
                                               sorted(hours.items(), key=lambda kv: -kv[1])))
        it_total = sum(iteration.values()) or 1.0
        lines.append("per iteration: " + ", ".join(f"{k} {v:.1f} ms ({100 * v / it_total:.0f}%)" for k, v in
                                                   sorted(iteration.items(), key=lambda kv: -kv[1])))
        if m.get("kernel_launches_per_iteration") is not None:
            lines.append(f"{m['kernel_launches_per_iteration']} kernel launches and "
                         f"{m.get('graph_launches_per_iteration')} graph launches per iteration "
                         f"({m.get('gpu_kernels_per_iteration')} GPU kernels), "
                         f"{m.get('host_syncs_per_iteration')} host syncs")
    for goal, phase, what in (("wm_train_samples_per_s", "world model update", "world-model update"),
                              ("imagination_samples_per_s", "imagination", "imagination (sequential steps)")):
        rate, ms = m.get(goal), iteration.get(phase)
        if not goals[goal]["met"] and rate and ms:
            samples = rate * ms / 1e3  # the preset's samples per call
            lines.append(f"{what} {ms:.1f} ms per {samples:,.0f} samples; the goal needs <= "
                         f"{samples / GOALS[goal] * 1e3:.2f} ms")
    return lines


def git_commit() -> str:
    """HEAD of the checkout, or "" where there is no .git (a copied tree) or no git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return ""


def print_summary(summary: dict, records: dict) -> None:
    print(f"\n=== GPU evidence: {summary['device']}, torch {summary['torch']}, commit {summary['commit'][:10] or '?'},"
          f" {summary['elapsed_s']:.0f} s of {summary['budget_s']:.0f} ===")
    for s in summary["stages"]:
        note = s.get("note", "") if s["status"] == "failed" else s.get("note", "")[:90]
        print(f"  {s['name']:<20}{s['status']:<9}{s['seconds']:>6.0f}s  {note}")
    print(f"\n  {'variant':<14}{'run h':>8}{'WM/s':>10}{'imag/s':>10}{'iter ms':>9}{'launch':>8}{'kern':>7}"
          f"{'sync':>6}  drift ok")
    for name, v in summary["variants"].items():
        def show(x, fmt="{:,.0f}"):
            return "-" if x is None else fmt.format(x)
        print(f"  {name:<14}{show(v['projected_full_run_hours'], '{:.2f}'):>8}{show(v['wm_train_samples_per_s']):>10}"
              f"{show(v['imagination_samples_per_s']):>10}{show(v['train_iteration_ms'], '{:.1f}'):>9}"
              f"{show(v['kernel_launches_per_iteration']):>8}{show(v['gpu_kernels_per_iteration']):>7}"
              f"{show(v['host_syncs_per_iteration']):>6}  {v['drift_within_limits']}"
              + ("" if v["complete"] else "  (partial)"))
    packing = next((r for n, r in records.items() if n.startswith("packing_")), None)
    if packing:
        print(f"\n  packing ({packing['variant']}): aggregate it/s {packing['aggregate_iterations_per_s']}, "
              f"speedup {packing['speedup_vs_one_run']}")
    boxing = next((r for n, r in records.items() if n.startswith("boxing_run_")), None)
    if boxing:
        print(f"  boxing ({boxing['variant']}): {boxing['phase_reached']} after {boxing['wall_s']:.0f} s, "
              f"{boxing['updates']} updates, checkpoints {[c['bytes'] // 2**20 for c in boxing['checkpoints']]} MiB")
    if summary["projected_full_run_hours"] is None:
        print("\n  no throughput record: nothing to project")
    else:
        print(f"\n  best variant within its drift limits: {summary['best_variant']}; projected full run "
              f"{summary['projected_full_run_hours']} h")
    for key, g in summary["goals"].items():
        print(f"  goal {key} {'<=' if key == 'projected_full_run_hours' else '>='} {g['goal']:,}: "
              f"{'met' if g['met'] else 'MISSED'} ({g['value']})")
    for line in summary["where_the_time_goes"]:
        print(f"  where the time goes: {line}")


# ------------------------------------------------------------------------------------ modes
def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG).write_text("")
    work = Path(args.work or "/tmp/twm_gpu_evidence")
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ctx = Context(args, out, work, started, started + args.budget,
                  env=dict(os.environ, PYTHONUNBUFFERED="1", TWM_COMMIT=os.environ.get("TWM_COMMIT") or git_commit()))
    budgets = scaled_budgets(args.budget)
    ctx.log(f"{PROG}: {args.budget:.0f} s budget, records into {out}, scratch in {work}")
    failed_install = False
    for stage in selected(args):
        left = ctx.deadline - time.monotonic() - SUMMARY_RESERVE_S
        limit = min(budgets[stage.name], left)
        if stage.name == "install":  # everything depends on it: at least 30 s even under a small --budget
            limit = max(limit, min(30.0, left))
        entry = {"name": stage.name, "budget_s": budgets[stage.name], "seconds": 0.0}
        if failed_install:
            entry.update(status="skipped", note="install failed")
        elif stage.optional and left < budgets[stage.name]:
            entry.update(status="skipped", note=f"{left:.0f} s left, needs {budgets[stage.name]:.0f}")
        elif limit < 5:
            entry.update(status="skipped", note="no time left")
        elif stage.needs_cuda and ctx.device != "cuda":
            entry.update(status="skipped", note="needs CUDA")
        else:
            ctx.log(f"stage {stage.name} (budget {limit:.0f} s): {stage.does}")
            begin = time.monotonic()
            try:
                entry.update(stage.run(ctx, limit))
            except StageError as err:
                entry.update(status="failed", note=str(err))
                failed_install = stage.name == "install"
            except Exception as err:  # a bug in one stage must not lose the others' records
                entry.update(status="failed", note=f"{type(err).__name__}: {err}")
                failed_install = stage.name == "install"
            entry["seconds"] = round(time.monotonic() - begin, 1)
            ctx.log(f"  -> {entry['status']}: {entry.get('note', '')}")
        ctx.stages.append(entry)
        ctx.save()
    ctx.save()
    summary = ctx.records[summary_name(ctx.device)]
    print_summary(summary, ctx.records)
    print(f"\nrecords: {out / BUNDLE} (unpack: python benchmarks/gpu_evidence.py --unpack {out / BUNDLE}); summary "
          f"{out / SUMMARY}; log {out / LOG}")
    return 1 if failed_install or any(s["status"] == "failed" for s in ctx.stages) else 0


def fetch_wheels(folder: Path) -> int:
    """Download the wheels the device image lacks, for its Python, into `folder` (to carry with the run)."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                              "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"--python-version={WHEEL_PYTHON}", "--implementation=cp", *platforms, "-d", str(folder),
           *(f"{name}=={version}" for name, version in WHEELS.items())]
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc == 0:
        print(f"wheels in {folder}; add it to .git/info/exclude and name it in the device run's carry")
    return rc


def unpack(bundle: Path, into: Path) -> int:
    data = json.loads(bundle.read_text())
    into.mkdir(parents=True, exist_ok=True)
    for name, record in data["records"].items():
        write_json(into / name, record)
        print(f"wrote {into / name}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the bundle, summary and log (created)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="total seconds (default 540)")
    parser.add_argument("--stages", help="comma-separated stage names to run (install always runs)")
    parser.add_argument("--wheels", default=".whl", help="folder of carried wheels (default .whl)")
    parser.add_argument("--work", help="scratch folder (default /tmp/twm_gpu_evidence)")
    parser.add_argument("--tiny", action="store_true", help="smoke preset and small budgets; runs on a CPU too")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the record schema only")
    parser.add_argument("--fetch-wheels", metavar="DIR", help="download the wheels to carry, then exit")
    parser.add_argument("--unpack", metavar="BUNDLE", help="write a bundle's records into --into, then exit")
    parser.add_argument("--into", default=str(ROOT / "results" / "benchmarks"), help="target of --unpack")
    parser.add_argument("--boxing-worker", metavar="RUN_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 30 <= args.budget <= 3600:
        raise UsageError(f"--budget must be between 30 and 3600 seconds, got {args.budget:g}")
    if args.stages:
        unknown = sorted(set(args.stages.split(",")) - {s.name for s in STAGES})
        if unknown:
            raise UsageError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(s.name for s in STAGES)}")
    if args.unpack and not Path(args.unpack).is_file():
        raise UsageError(f"--unpack: no bundle at {args.unpack}")
    if not (args.dry_run or args.fetch_wheels or args.unpack or args.boxing_worker or args.out):
        raise UsageError("--out DIR is required (or --dry-run, --fetch-wheels, --unpack)")
    if args.out and not args.dry_run:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    if args.boxing_worker:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        return boxing_worker(Path(args.boxing_worker), args.preset, args.variant)
    if args.fetch_wheels:
        return fetch_wheels(Path(args.fetch_wheels))
    if args.unpack:
        return unpack(Path(args.unpack), Path(args.into))
    if args.dry_run:
        print_plan(args)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
