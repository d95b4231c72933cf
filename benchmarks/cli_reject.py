"""How long `twm-train run` takes to refuse each bad value of issue 10 (exit 2, one line, nothing written),
against two references measured in the same run: a bare Python start and `import torch`.

    python benchmarks/cli_reject.py                       # -> results/benchmarks/cli_reject.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAD = {
    "schedule.final_eval_episodes=-1": ["--set", "schedule.final_eval_episodes=-1"],
    "schedule.eval_episodes=0": ["--set", "schedule.eval_episodes=0"],
    "schedule.eval_every=0": ["--set", "schedule.eval_every=0"],
    "runtime.keep_checkpoints=0": ["--set", "runtime.keep_checkpoints=0"],
    "dyn.num_heads=0": ["--set", "dyn.num_heads=0"],
    "ac.horizon=0": ["--set", "ac.horizon=0"],
    "runtime.device=tpu": ["--set", "runtime.device=tpu"],
    "--seed -1": ["--seed", "-1"],
    "obs.lr=nan": ["--set", "obs.lr=nan"],
}


def wall(cmd: list[str], expect: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert result.returncode == expect, (cmd, result.stderr)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/cli_reject.json"))
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="cli-reject-")) / "run"
    train = [sys.executable, "-m", "twm.cli", "run", "--game", "Pong", "--preset", "paper", "--out", str(out_dir)]
    references = {"python -c pass": [sys.executable, "-c", "pass"],
                  "python -c 'import torch'": [sys.executable, "-c", "import torch"]}
    record: dict = {"benchmark": "cli_reject", "command": "python benchmarks/cli_reject.py",
                    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                    "reps": args.reps, "note": "median wall-clock seconds per command; other jobs shared the "
                    "machine, so compare with the references measured in the same run", "references_s": {},
                    "refusals_s": {}}
    for name, cmd in references.items():
        record["references_s"][name] = statistics.median(wall(cmd, 0) for _ in range(args.reps))
    for name, extra in BAD.items():
        record["refusals_s"][name] = statistics.median(wall(train + extra, 2) for _ in range(args.reps))
        assert not out_dir.exists(), f"{name} wrote {out_dir}"
    out_dir.parent.rmdir()
    record["slowest_refusal_s"] = max(record["refusals_s"].values())
    for name, seconds in {**record["references_s"], **record["refusals_s"]}.items():
        print(f"{seconds:6.2f} s  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record written to {args.out}")


if __name__ == "__main__":
    main()
