"""Learning check: the smoke-sized TWM agent on the Catch pixel task (twm/catch.py).

Prints the random-policy return and the trained agent's evaluation returns; a working agent ends
clearly above random (random catches 1 ball in 4: -5 per 10-ball game; perfect play is +10).
Writes results/benchmarks/learning_check.json.

    python benchmarks/learning_check.py [--out DIR] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from twm.config import smoke
from twm.envs import RandomPolicy, evaluate, num_actions
from twm.train import train

# The smoke model with a longer run: 1,000 random steps; pretraining 1,125 phi, 562 psi and 525
# actor-critic updates; 4,000 agent steps with 5,000 train steps. The tiny model gets 3x the paper's
# learning rates to learn within the check's few minutes.
OVERRIDES = {
    "obs.lr": 3e-4,
    "dyn.lr": 3e-4,
    "ac.actor_lr": 3e-4,
    "ac.critic_lr": 3e-5,
    "buffer.capacity": 5_000,
    "buffer.prefill": 1_000,
    "schedule.pretrain_budget": 60_000,
    "schedule.budget": 60_000 + 5_000 * 112,
    "schedule.eval_every": 1_000,
    "schedule.eval_episodes": 10,
    "schedule.final_eval_episodes": 50,
    "runtime.eval_envs": 5,
    "runtime.checkpoint_interval_s": 120,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: a temporary folder)")
    parser.add_argument("--record", default="results/benchmarks/learning_check.json")
    args = parser.parse_args()

    config = smoke().with_overrides(OVERRIDES)
    random_scores = evaluate("Catch", config.env, RandomPolicy(num_actions("Catch"), seed=args.seed), 200, 8,
                             seed=args.seed)
    print(f"random policy: {random_scores.mean():+.2f} ± {random_scores.std():.2f} over {len(random_scores)} games")

    run_dir = Path(args.out or tempfile.mkdtemp(prefix="learning_check_"))
    started = time.monotonic()
    summary = train(config, "Catch", args.seed, run_dir / "catch", tracker=None)
    wall = time.monotonic() - started
    trained = np.asarray(summary.episodes)
    margin = trained.mean() - random_scores.mean()
    print(f"trained agent:  {trained.mean():+.2f} ± {trained.std():.2f} over {len(trained)} games "
          f"(+{margin:.2f} over random) after {wall / 60:.1f} min")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "benchmark": "learning_check",
        "command": "python benchmarks/learning_check.py",
        "task": "Catch (twm/catch.py): 10 balls per game, +1 catch, -1 miss",
        "preset": "smoke",
        "overrides": OVERRIDES,
        "seed": args.seed,
        "random_return_mean": float(random_scores.mean()),
        "random_return_std": float(random_scores.std()),
        "trained_return_mean": float(trained.mean()),
        "trained_return_std": float(trained.std()),
        "trained_episodes": len(trained),
        "eval_curve": summary.evals,
        "final_scores": summary.episodes,
        "wall_minutes": wall / 60,
        "train_steps": summary.train_steps,
        "env_steps": summary.env_steps,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "load_average_at_end": list(Path("/proc/loadavg").read_text().split()[:3]),
        "commit": commit,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    Path(args.record).write_text(json.dumps(record, indent=1))
    print(f"record written to {args.record}; run outputs in {run_dir / 'catch'}")


if __name__ == "__main__":
    main()
