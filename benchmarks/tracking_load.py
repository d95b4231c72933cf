"""N concurrent runs logging at the trainer's real cadence into one MLflow store: failed runs, lost points,
duplicates, and how often the senders had to retry.

Each writer is its own process (forked after importing mlflow, so 130 of them fit in memory) doing what a
trainer does for tracking, with the real code: it records the run (`Tracker.start`: mlflow_run.json and the
background sender), appends a batch of loss means to its metrics.jsonl every `--flush-every-s` (27 keys,
step = update number; every 10th batch also an evaluation), writes status.json, and at the end gives the
sender the trainer's bound (`runtime.tracking_close_s`) to send the last points. Afterwards every run's
MLflow history is compared with its local log.

The real cadence: a paper run does about 159,000 updates in about 10 hours on an A100 (4.4 updates/s), and
the trainer logs the loss means every `runtime.metrics_every` = 100 updates, so one batch per run every
~23 s. `--speedup 10` compresses time tenfold (a stress test, not the real cadence).

Stores: `--store sqlite` (the local executor's default: one sqlite file in the runs dir, created once
before the writers start, as `twm-suite launch` does), or `--store server`: a real `mlflow server` on
loopback (its backend `--backend-uri`, default a sqlite file; use postgresql://... for the production
setup), or an already running one with `--tracking-uri`.

Usage: python benchmarks/tracking_load.py --writers 130 --store sqlite [--duration-s 300] [--speedup 1]
Prints the figures; writes a JSON record (`--record`, default results/benchmarks/tracking_load.json, where
each run of the script adds or replaces the entry for its store/writers/speedup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

# Imported before forking, so that the writers share these pages instead of each importing them.
import alembic.command  # noqa: F401
import alembic.config  # noqa: F401
import mlflow.store.tracking.rest_store  # noqa: F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
from mlflow.tracking import MlflowClient

from twm import run_record as rr
from twm.config import paper
from twm.metric_log import MetricLog, read_points
from twm.tracking import Tracker, artifact_location, ensure_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "tracking-load"
LOSS_KEYS = [f"{group}/{name}" for group, names in {
    "obs": ["loss", "decoder_loss", "entropy_loss", "consistency_loss", "grad_norm", "entropy"],
    "dyn": ["loss", "latent_loss", "reward_loss", "discount_loss", "grad_norm"],
    "actor": ["loss", "reinforce_loss", "entropy_loss", "entropy", "grad_norm"],
    "critic": ["loss", "value", "return", "grad_norm"],
    "imag": ["reward", "discount", "done_frac", "weight"],
    "perf": ["env_steps_per_s", "train_steps_per_s"]}.items() for name in names] + [rr.PROGRESS_ENV_STEP]
PAPER_FLUSH_EVERY_S = 10 * 3600 / 159_000 * 100  # ~22.6 s


def writer(index: int, uri: str, runs_dir: Path, flush_every_s: float, duration_s: float, close_s: float,
           interval_s: float) -> None:
    """One run's tracking, as the trainer does it; writes its outcome to result.json in its run dir."""
    run_dir = runs_dir / f"run{index:03d}"
    run_dir.mkdir(parents=True)
    outcome = {"ok": False}
    try:
        rr.write_json_atomic(run_dir / rr.STATUS, {"state": rr.STATE_RUNNING})
        log = MetricLog(run_dir / rr.METRICS)
        tracker = Tracker(uri, EXPERIMENT, f"run{index:03d}", {rr.TAG_GAME: "Pong", rr.TAG_SEED: str(index)},
                          location=artifact_location(uri, runs_dir), interval_s=interval_s, close_s=close_s)
        warnings: list[str] = []
        started = time.monotonic()
        tracker.start(run_dir, paper().to_dict() | {"game": "Pong", "seed": index},
                      log=lambda line: warnings.append(line) if line.startswith("warning") else None)
        batches = 0
        phase = (index * 0.37) % 1.0  # runs of a job array start together but do not log in lockstep
        while time.monotonic() - started < duration_s:
            time.sleep(max(0.0, started + (batches + phase) * flush_every_s - time.monotonic()))
            batches += 1
            update = batches * 100
            log.append({key: 1.0 / (update + i) for i, key in enumerate(LOSS_KEYS)}, step=update)
            if batches % 10 == 0:
                log.append({rr.EVAL_RETURN: float(batches), rr.EVAL_RETURN_STD: 1.0, rr.EVAL_EPISODES: 10},
                           step=batches * 500)
        log.append({rr.FINAL_SCORE: float(index)}, step=100_000)
        log.sync()
        rr.write_json_atomic(run_dir / rr.STATUS, {"state": rr.STATE_DONE})
        closing = time.monotonic()
        complete = tracker.close()
        sender = tracker.sender
        outcome = {"ok": True, "complete": complete, "close_s": time.monotonic() - closing,
                   "failed_passes": sender.failed_passes, "error_kinds": dict(sender.error_kinds),
                   "warnings": len(warnings), "warning_lines": warnings[:2],
                   "last_error": sender.last_error, "batches": batches}
    except Exception as err:  # a writer that fails is what this benchmark counts
        outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    finally:
        rr.write_json_atomic(run_dir / "result.json", outcome)


def fork_writers(count: int, **kwargs) -> list[int]:
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                writer(index, **kwargs)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def in_child(function, *args) -> None:
    """Run `function` in a forked child: the parent keeps no MLflow store (engines are not fork-safe)."""
    pid = os.fork()
    if pid == 0:
        try:
            function(*args)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{function.__name__} failed")


def create_experiment(uri: str, runs_dir: Path) -> None:
    ensure_experiment(MlflowClient(tracking_uri=uri), EXPERIMENT, artifact_location(uri, runs_dir))


def start_server(home: Path, backend_uri: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--backend-store-uri", backend_uri,
                             "--artifacts-destination", str(home / "artifacts")],
                            cwd=home, stdout=open(home / "server.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("mlflow server did not start:\n" + (home / "server.log").read_text()[-2000:])
        time.sleep(0.5)


def verify(uri: str, runs_dir: Path, writers: int) -> dict:
    """Every run's MLflow history against its local log."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.data.tags.get(rr.TAG_RUN_UID): r for r in client.search_runs([experiment.experiment_id],
                                                                            max_results=10_000)}
    logged = in_mlflow = lost = duplicates = extra = not_done = 0
    for index in range(writers):
        run_dir = runs_dir / f"run{index:03d}"
        record = rr.read_json(run_dir / rr.MLFLOW_RUN) or {}
        local = {p.ident for p in read_points(run_dir / rr.METRICS)[0]}
        logged += len(local)
        run = runs.get(record.get("uid"))
        if run is None:
            lost += len(local)
            not_done += 1
            continue
        counts = Counter((key, m.step) for key in run.data.metrics
                         for m in client.get_metric_history(run.info.run_id, key))
        in_mlflow += sum(counts.values())
        lost += len(local - set(counts))
        extra += len(set(counts) - local)
        duplicates += sum(n - 1 for n in counts.values())
        not_done += run.data.tags.get(rr.TAG_STATUS) != rr.STATE_DONE
    return {"runs_in_mlflow": len(runs), "points_logged": logged, "points_in_mlflow": in_mlflow, "lost_points": lost,
            "duplicate_points": duplicates, "unexpected_points": extra, "runs_not_tagged_done": not_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=130)
    parser.add_argument("--store", choices=("sqlite", "server"), default="sqlite")
    parser.add_argument("--backend-uri", default="", help="--store server: the server's backend (default: sqlite)")
    parser.add_argument("--tracking-uri", default="", help="--store server: use this running server")
    parser.add_argument("--duration-s", type=float, default=300.0, help="how long each writer logs")
    parser.add_argument("--speedup", type=float, default=1.0, help="compress the real cadence (1 = real)")
    runtime = paper().runtime
    parser.add_argument("--close-s", type=float, default=runtime.tracking_close_s,
                        help="the sender's bound at the end (default: the trainer's)")
    parser.add_argument("--interval-s", type=float, default=runtime.tracking_interval_s,
                        help="the sender's pass interval (default: the trainer's)")
    parser.add_argument("--record", type=Path, default=ROOT / "results" / "benchmarks" / "tracking_load.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs and stores here")
    parser.add_argument("--note", default="", help="how the store was set up, for the record")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tracking_load_"))
    runs_dir = work / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.store == "sqlite":
            uri, backend = f"sqlite:///{runs_dir / rr.MLFLOW_DB}", "sqlite (one file for all runs)"
        elif args.tracking_uri:
            uri, backend = args.tracking_uri, "a running server"
        else:
            (work / "server").mkdir(exist_ok=True)
            backend = args.backend_uri or f"sqlite:///{work / 'server' / 'mlflow.db'}"
            server, uri = start_server(work / "server", backend)
            backend = backend.split("://")[0] + " behind mlflow server"
        in_child(create_experiment, uri, runs_dir)
        flush_every_s = PAPER_FLUSH_EVERY_S / args.speedup
        print(f"{args.writers} writers into {uri} ({backend}), a batch of {len(LOSS_KEYS)} points every "
              f"{flush_every_s:.1f} s each for {args.duration_s:.0f} s ...", flush=True)
        started = time.monotonic()
        pids = fork_writers(args.writers, uri=uri, runs_dir=runs_dir, flush_every_s=flush_every_s,
                            duration_s=args.duration_s, close_s=args.close_s, interval_s=args.interval_s)
        exits = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        wall_s = time.monotonic() - started
        outcomes = [rr.read_json(runs_dir / f"run{i:03d}" / "result.json") or {"ok": False}
                    for i in range(args.writers)]
        checked = verify(uri, runs_dir, args.writers)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    ok = [o for o in outcomes if o.get("ok")]
    closes = sorted(o["close_s"] for o in ok)
    entry = {
        "store": args.store, "backend": backend, "writers": args.writers, "speedup": args.speedup,
        "batch_every_s": round(flush_every_s, 2), "points_per_batch": len(LOSS_KEYS),
        "duration_s": args.duration_s, "close_bound_s": args.close_s, "sender_interval_s": args.interval_s,
        "wall_s": round(wall_s, 1),
        "failed_writers": sum(not o.get("ok") for o in outcomes) + sum(code != 0 for code in exits),
        "writer_errors": sorted({o["error"] for o in outcomes if "error" in o})[:5],
        "senders_incomplete_at_close": sum(not o["complete"] for o in ok),
        "sender_failed_passes_total": sum(o["failed_passes"] for o in ok),
        "sender_error_kinds": dict(sum((Counter(o["error_kinds"]) for o in ok), Counter())),
        "sender_last_errors": sorted({o["last_error"] for o in ok if o["last_error"]})[:5],
        "warning_lines": sum(o["warnings"] for o in ok),
        "warning_samples": sorted({line.split("] ")[-1][:300] for o in ok for line in o["warning_lines"]})[:5],
        "close_s_median": round(closes[len(closes) // 2], 2) if closes else None,
        "close_s_max": round(closes[-1], 2) if closes else None,
        **checked,
        "command": "python benchmarks/tracking_load.py " + " ".join(sys.argv[1:]), "note": args.note,
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key, value in entry.items():
        print(f"  {key}: {value}")
    record = rr.read_json(args.record) or {"benchmark": __doc__.splitlines()[0], "entries": []}
    record["entries"] = [e for e in record["entries"] if (e["store"], e["backend"], e["writers"], e["speedup"]) !=
                         (args.store, backend, args.writers, args.speedup)] + [entry]
    record["machine"] = f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}"
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record: {args.record}")


if __name__ == "__main__":
    main()
