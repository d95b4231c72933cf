"""Frames/s of the deployed policy at batch 1 on CPU, on real ALE frames: the z policy (encoder + actor,
the paper's default) and the [z, h] policy (ac.input_h, + one transformer pass over the real-step window),
with 1 thread and all threads; also the released-style eager path and the bf16 switch for comparison.

Usage: python benchmarks/policy_fps.py [--game Boxing] [--frames 300] [--repeats 5]
Prints a table and writes results/benchmarks/policy_fps_cpu.json. Weights are freshly initialised (speed
does not depend on their values)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from twm.actor_critic import sample_action
from twm.agent import Agent, eval_mode
from twm.config import Config, paper
from twm.observation_model import sample_latent

ROOT = Path(__file__).resolve().parents[1]


def environment_record(device: torch.device) -> dict:
    """Device, software and load: what the figures of a benchmark record depend on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        model = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        name = f"{model[0] if model else platform.processor()} ({os.cpu_count()} logical CPUs)"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:  # no git on the machine
        commit = ""
    commit = commit or os.environ.get("TWM_COMMIT", "")  # a copied tree without .git: given by the caller
    return {"device": name, "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def real_frames(game: str, config: Config, count: int, seed: int = 0) -> np.ndarray:
    """`count` consecutive evaluation-env observations under random actions: uint8 (count, 4, 64, 64)."""
    from twm.envs import make_env  # gymnasium and ale-py only where real frames are asked for

    env = make_env(game, config.env, evaluation=True)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames = []
    for _ in range(count):
        frames.append(np.asarray(obs))
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames)


def released_style_act(agent: Agent) -> Callable[[np.ndarray], np.ndarray]:
    """The eager path as first written (and as in the released code): no_grad, train/eval switching,
    the library convs throughout."""

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        with eval_mode(agent.obs_model):
            logits = agent.obs_model.encode(agent._pixels(torch.from_numpy(np.ascontiguousarray(obs))))
        with eval_mode(agent.actor):
            a = sample_action(agent.actor(sample_latent(logits, "argmax")))
        return a.cpu().numpy().astype(np.int64)

    return act


def frames_per_second(policy, frames: np.ndarray, repeats: int, warmup: int = 30) -> dict:
    """Median and best frames/s of act (+ observe when the policy keeps history) over `repeats` passes."""
    act = policy if callable(policy) else policy.act
    observe = getattr(policy, "observe", None)
    zeros, no_done = np.zeros(1, np.float32), np.zeros(1, bool)
    for obs in frames[:warmup]:
        act(obs[None])
        if observe is not None:
            observe(zeros, no_done)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for obs in frames:
            act(obs[None])
            if observe is not None:
                observe(zeros, no_done)
        rates.append(len(frames) / (time.perf_counter() - start))
    return {"median": round(statistics.median(rates), 1), "best": round(max(rates), 1)}


def latent_agreement(fp32: Agent, bf16: Agent, frames: np.ndarray) -> float:
    """Fraction of the 32 categorical argmaxes that the bf16 acting encoder shares with fp32."""
    with torch.inference_mode():
        o = fp32._pixels(torch.from_numpy(frames))
        ref = fp32.obs_model.encode_for_acting(o).argmax(-1)
        with bf16.autocast():
            low = bf16.obs_model.encode_for_acting(o).float().argmax(-1)
    return round((ref == low).float().mean().item(), 4)


def stage_breakdown(agent: Agent, frame: np.ndarray, calls: int = 200) -> dict:
    """Best-of-5 ms per call of each stage of the z policy at batch 1 (current thread setting)."""

    def best_ms(fn) -> float:
        best = float("inf")
        for _ in range(5):
            fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - start) / calls)
        return round(1e3 * best, 3)

    stages, encoder = {}, agent.obs_model.encoder
    with torch.inference_mode():
        x = agent._pixels(torch.from_numpy(frame[None]))
        for i, layer in enumerate(encoder):
            if isinstance(layer, torch.nn.Conv2d):
                stages[f"conv {tuple(x.shape[1:])} -> {layer.out_channels}ch"] = best_ms(
                    lambda layer=layer, x=x: agent.obs_model.encode_for_acting_layer(layer, x))
            x = agent.obs_model.encode_for_acting_layer(layer, x)
            if isinstance(layer, torch.nn.Flatten):
                stages["encoder MLP"] = best_ms(lambda x=x, i=i: encoder[i + 1:](x))
                break
        z = sample_latent(agent.obs_model.encode_for_acting(agent._pixels(torch.from_numpy(frame[None]))), "argmax")
        stages["actor MLP"] = best_ms(lambda: agent.actor(z))
    policy = agent.make_policy(1)
    total = best_ms(lambda: policy.act(frame[None]))
    # Each stage above ran with its weights hot in cache; a whole act() streams all 4.4M weights (17.8 MB)
    # through the cache every frame, so the remainder is mostly that, plus SiLUs, argmax, sampling, numpy.
    stages["remainder (cold weights, glue)"] = round(total - sum(stages.values()), 3)
    stages["total act()"] = total
    return stages


def measure_policy_fps(game: str, frames: int, repeats: int) -> dict:
    """All variants at 1 thread and at all threads; returns {"metrics": ..., "table": ...}."""
    from twm.envs import num_actions

    config = paper()
    obs = real_frames(game, config, frames)
    A = num_actions(game)
    torch.manual_seed(0)
    agent = Agent(config, A)
    bf16_agent = Agent(config.with_overrides({"runtime.precision": "bf16"}), A)
    bf16_agent.load_state_dict(agent.state_dict())
    zh_agent = Agent(config.with_overrides({"ac.input_h": True}), A)
    variants = {"z (deployed)": lambda: agent.make_policy(1),
                "z (released-style eager)": lambda: released_style_act(agent),
                "z (bf16 autocast)": lambda: bf16_agent.make_policy(1),
                "[z,h] (deployed)": lambda: zh_agent.make_policy(1)}
    default_threads = torch.get_num_threads()
    table = {}
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for name, make in variants.items():
            if threads > 1 and "deployed" not in name:
                continue  # comparison variants at 1 thread only (multi-thread figures are noisy on a shared VM)
            table[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = frames_per_second(make(), obs, repeats)
    torch.set_num_threads(1)
    breakdown = stage_breakdown(agent, obs[0])
    torch.set_num_threads(default_threads)
    all_t = f"{default_threads} thread{'s' if default_threads > 1 else ''}"
    metrics = {
        "policy_fps_b1_1thread": table["z (deployed), 1 thread"]["median"],
        "policy_fps_b1_all_threads": table[f"z (deployed), {all_t}"]["median"],
        "policy_fps_b1_1thread_released_style": table["z (released-style eager), 1 thread"]["median"],
        "policy_fps_b1_1thread_bf16": table["z (bf16 autocast), 1 thread"]["median"],
        "policy_zh_fps_b1_1thread": table["[z,h] (deployed), 1 thread"]["median"],
        "policy_zh_fps_b1_all_threads": table[f"[z,h] (deployed), {all_t}"]["median"],
        "bf16_latent_argmax_agreement": latent_agreement(agent, bf16_agent, obs),
    }
    return {"metrics": metrics, "table": table, "ms_per_stage_1thread": breakdown, "game": game, "frames": frames,
            "repeats": repeats, "all_threads": default_threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Boxing")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", type=Path, default=ROOT / "results" / "benchmarks" / "policy_fps_cpu.json")
    args = parser.parse_args()
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be positive")

    record = {"benchmark": "deployed policy frames/s at batch 1 on CPU (real frames)",
              **environment_record(torch.device("cpu"))}
    record.update(measure_policy_fps(args.game, args.frames, args.repeats))
    record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record["notes"] = ("median (best) frames/s over the repeats; z = encoder + actor, [z,h] adds the transformer "
                       "over the last 17 real steps; released-style = eager convs with train/eval switching; the "
                       "paper reports 653 (z) and 213 ([z,h]) frames/s on an unspecified CPU")
    print(f"{'variant':<42}{'median fps':>12}{'best fps':>10}")
    for name, rate in record["table"].items():
        print(f"{name:<42}{rate['median']:>12.1f}{rate['best']:>10.1f}")
    print("where the time goes (1 thread, best of 5):")
    for name, ms in record["ms_per_stage_1thread"].items():
        print(f"  {name:<48}{ms:>8.3f} ms")
    print(f"bf16 latent argmax agreement with fp32: {record['metrics']['bf16_latent_argmax_agreement']:.4f}")
    print(f"load average {record['load_average_at_start']} -> {record['load_average_at_end']}")
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.record}")


if __name__ == "__main__":
    main()
