"""Checkpoint size and write time at the paper preset near 100K interactions: the whole-buffer format
(format 1, what every checkpoint wrote before) against append-only replay frames (format 2), on the same
machine and disk in the same run.

The payload is real: a paper-preset Agent (Pong, 6 actions) with its Adam states, the training env's state,
the RNG states and a ReplayBuffer filled to 100,000 interactions through `ReplayBuffer.append`. The frames
are synthetic (cycled from random frame stacks): the files are raw uint8, so their content does not change
the size or the time. Format 2 is measured as a run meets it: a checkpoint `--since` interactions before
(the frames up to there are already on disk) and then the checkpoint at 100,000, which writes only the frames
since then and the model state. Every write is fsynced. Prints figures and writes a JSON record.

    python benchmarks/checkpoint_io.py                      # -> results/benchmarks/checkpoint_io.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twm.agent import Agent
from twm.checkpoint import (
    checkpoint_dir,
    env_state,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from twm.config import paper
from twm.envs import make_env, num_actions
from twm.replay import ReplayBuffer
from twm.run_record import fsync_dir, temp_path

GAME = "Pong"


def filled_buffer(config, size: int) -> ReplayBuffer:
    """A paper-capacity buffer holding `size` interactions, appended one by one like a run does."""
    shape = (config.env.frame_stack, config.env.screen_size, config.env.screen_size)
    buffer = ReplayBuffer(config.buffer.capacity, shape)
    pool = np.random.default_rng(0).integers(0, 256, size=(997, *shape), dtype=np.uint8)
    buffer.set_current_obs(pool[0])
    for i in tqdm(range(size), desc="filling the replay buffer", unit="step"):
        buffer.append(i % 6, 0.0, False, i % 2000 == 1999, pool[(i + 1) % len(pool)])
    return buffer


def trained_agent(config) -> Agent:
    """A paper-preset agent whose four Adam optimizers hold their moment estimates (one zero-gradient step),
    so the optimizer state has its full size."""
    agent = Agent(config, num_actions(GAME), "cpu")
    for optimizer in (agent.obs_optimizer, agent.dyn_optimizer, agent.actor_optimizer, agent.critic_optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return agent


def payload(agent: Agent, buffer: ReplayBuffer, env, config, buffer_state: dict) -> dict:
    return {"game": GAME, "seed": 0, "config": config.to_json(), "state": json.dumps({"phase": "main"}),
            "agent": agent.state_dict(), "optimizers": agent.optimizer_state_dict(), "buffer": buffer_state,
            "rng": rng_state(), "env": env_state(env)}


def whole_buffer_state(buffer: ReplayBuffer) -> dict:
    """Format 1's buffer entry, as `ReplayBuffer.state_dict` wrote it before: every frame, every time."""
    n = buffer.size
    return {"size": n, "obs": buffer.obs[: n + 1].cpu(), "actions": buffer.actions[:n].cpu(),
            "rewards": buffer.rewards[:n].cpu(), "terminated": buffer.terminated[:n].cpu(),
            "truncated": buffer.truncated[:n].cpu(), "visits": buffer.visits.clone()}


def save_format_1(folder: Path, state: dict) -> Path:
    """Format 1's save: one torch.save of everything to a temp file, fsync, rename."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ckpt-000000001.pt"
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        torch.save({"format": 1, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--since", type=int, nargs="+", default=[1_700, 5_000],
                        help="interactions since the previous checkpoint (1,700: 600 s at the paper's 10 h per "
                             "100K on an A100; 5,000: the evaluation interval, a checkpoint precedes each)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir under /tmp)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/checkpoint_io.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    config = paper()
    agent, env = trained_agent(config), make_env(GAME, config.env)
    env.reset(seed=0)
    full = filled_buffer(config, args.interactions)
    root = Path(tempfile.mkdtemp(prefix="checkpoint-io-", dir=args.dir))
    record: dict = {
        "benchmark": "checkpoint_io", "command": "python benchmarks/checkpoint_io.py",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "disk": str(root), "free_bytes": shutil.disk_usage(root).free},
        "setup": {"preset": "paper", "game": GAME, "interactions": args.interactions, "reps": args.reps,
                  "agent_parameters": agent.param_counts()["total"],
                  "frames": "synthetic: ReplayBuffer.append of random uint8 frame stacks (content does not "
                            "change raw-file size or write time)",
                  "fsync": "every file and its folder"},
        "note": "medians over reps, the two formats alternating; other jobs shared this machine's disk and 2 "
                "cores, so compare the ratios within this record, not absolute times across records",
    }
    def format_1(rep: int) -> dict:
        """One whole-buffer checkpoint: write and load times, size."""
        folder = root / f"format1-{rep}"
        state = payload(agent, full, env, config, whole_buffer_state(full))
        write_s, path = timed(lambda: save_format_1(folder, state))
        load_s = timed(lambda: torch.load(path, map_location="cpu", weights_only=True))[0]
        size = path.stat().st_size
        shutil.rmtree(folder)
        return {"write_s": write_s, "load_s": load_s, "bytes": size}

    def format_2(since: int, rep: int) -> dict:
        """The checkpoint at `interactions` of a run whose previous checkpoint was `since` interactions earlier."""
        run_dir = root / f"format2-{since}-{rep}"
        folder = checkpoint_dir(run_dir)
        folder.mkdir(parents=True)
        buffer = ReplayBuffer(config.buffer.capacity, tuple(full.obs.shape[1:]))
        buffer.obs, buffer.actions, buffer.rewards = full.obs, full.actions, full.rewards  # shared, no copy
        buffer.terminated, buffer.truncated = full.terminated, full.truncated
        buffer.size = args.interactions - since  # the previous checkpoint: its frames are on disk already
        buffer.save_frames(folder)
        save_checkpoint(run_dir, payload(agent, buffer, env, config, buffer.state_dict()))
        buffer.size = args.interactions
        disk_before = sum(p.stat().st_size for p in folder.iterdir())

        def checkpoint() -> Path:
            buffer.save_frames(folder)
            return save_checkpoint(run_dir, payload(agent, buffer, env, config, buffer.state_dict()))

        def load() -> None:
            state = load_checkpoint(list_checkpoints(run_dir)[-1])
            ReplayBuffer(config.buffer.capacity, tuple(full.obs.shape[1:])).load_state_dict(state["buffer"], folder)

        write_s = timed(checkpoint)[0]
        on_disk = sum(p.stat().st_size for p in folder.iterdir())
        load_s = timed(load)[0]
        shutil.rmtree(run_dir)
        return {"write_s": write_s, "load_and_verify_s": load_s, "bytes": on_disk - disk_before, "on_disk": on_disk}

    try:
        runs: dict[str, list[dict]] = {"1": [], **{str(since): [] for since in args.since}}
        for rep in tqdm(range(args.reps), desc="checkpoints (format 1 and 2 alternating)"):
            runs["1"].append(format_1(rep))
            for since in args.since:
                runs[str(since)].append(format_2(since, rep))

        def median(key: str, name: str) -> float:
            return statistics.median(r[name] for r in runs[key])

        size = runs["1"][-1]["bytes"]
        before = {"checkpoint_bytes": size, "bytes_written_per_checkpoint": size,
                  "run_bytes_on_disk": 2 * size,  # runtime.keep_checkpoints = 2 whole checkpoints
                  "write_s": median("1", "write_s"), "load_s": median("1", "load_s"),
                  "write_s_each": [r["write_s"] for r in runs["1"]]}
        print(f"format 1 (whole buffer): {size / 1e9:.3f} GB per checkpoint, write {before['write_s']:.2f} s, "
              f"load {before['load_s']:.2f} s")
        after = {}
        for since in map(str, args.since):
            written, on_disk, write_s = runs[since][-1]["bytes"], runs[since][-1]["on_disk"], median(since, "write_s")
            after[since] = {"bytes_written_per_checkpoint": written, "run_bytes_on_disk": on_disk,
                            "write_s": write_s, "load_and_verify_s": median(since, "load_and_verify_s"),
                            "write_s_each": [r["write_s"] for r in runs[since]],
                            "write_time_ratio_before_over_after": before["write_s"] / write_s,
                            "bytes_ratio_before_over_after": size / written}
            print(f"format 2, {since} interactions since the previous checkpoint: writes {written / 1e6:.0f} MB in "
                  f"{write_s:.2f} s ({size / written:.1f}x fewer bytes, {before['write_s'] / write_s:.1f}x faster); "
                  f"{on_disk / 1e9:.3f} GB on disk for the run's checkpoints; load + verify "
                  f"{after[since]['load_and_verify_s']:.2f} s")
        record["before_format_1_whole_buffer"] = before
        record["after_format_2_append_only_frames"] = after
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record written to {args.out}")


if __name__ == "__main__":
    main()
