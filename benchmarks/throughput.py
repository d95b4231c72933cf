"""Training throughput on the `paper` preset (issue 5): median ms per training iteration and per phase,
samples/s in the paper's units (world model 100x16 per update, imagination and policy training 400x15),
K/V-cached imagination against the vanilla transformer (and the released layer-input memory) in the same
run, and a projected wall-clock for a whole run (pretraining, 125,000 iterations, collection, 19
evaluations of 10 episodes and the final 100) from the measured phase costs.

On a CPU a paper-size step takes tens of seconds, so the phases run at reduced batch sizes (--wm-batch,
--imag-batch; per-sample costs scale linearly to the paper's N=100, M=400, which is conservative: larger
GEMMs are more efficient) with paper widths, paper sequence length and horizon, and a realistic buffer.
Kernel launches and host syncs need a GPU; on CPU the record counts dispatched ATen ops and sync-prone ops
(.item(), nonzero, ...) per iteration instead.

Usage: python benchmarks/throughput.py [--buffer-size 50000] [--wm-batch 16] [--imag-batch 64] [--reps 3]
       [--threads 1]
Prints a table and writes results/benchmarks/throughput_{cpu,cuda}.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_fps import environment_record, real_frames  # noqa: E402

from twm.agent import Agent  # noqa: E402
from twm.config import Config, paper  # noqa: E402
from twm.envs import make_env, num_actions  # noqa: E402
from twm.replay import ReplayBuffer  # noqa: E402
from twm.schedule import compute_budget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "equal")


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> tuple[float, object]:
    """Median seconds of fn over reps calls after one warm-up; returns (seconds, last result)."""
    result = fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def filled_buffer(size: int, device: torch.device, A: int) -> ReplayBuffer:
    """A buffer of `size` transitions (random pixels, actions, rewards, 1% episode ends) with visit counts
    as after size*1.3 updates of 100 starts."""
    buffer = ReplayBuffer(size, (4, 64, 64), device)
    g = torch.Generator().manual_seed(0)
    for lo in range(0, size + 1, 10_000):
        hi = min(lo + 10_000, size + 1)
        buffer.obs[lo:hi] = torch.randint(0, 256, (hi - lo, 4, 64, 64), dtype=torch.uint8, generator=g).to(device)
    buffer.actions[:] = torch.randint(A, (size,), generator=g).to(device)
    buffer.rewards[:] = torch.tanh(torch.randn(size, generator=g)).to(device)
    buffer.terminated[:] = (torch.rand(size, generator=g) < 0.01).to(device)
    buffer.visits[:] = torch.poisson(torch.full((size,), 130.0), generator=g).long()
    buffer.size = size
    return buffer


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops (a CPU proxy for kernel launches) and sync-prone ones."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def count_ops(config: Config, A: int, device: torch.device) -> dict:
    """ATen ops and sync-prone ops in one whole train step (paper widths; counts do not depend on batch)."""
    small = config.with_overrides({"wm.batch_size": 4, "ac.batch_size": 8})
    agent = Agent(small, A, device)
    buffer = filled_buffer(1_000, device, A)
    batch = buffer.gather(buffer.sample_starts(4, small.wm.sequence_length, small.buffer.temperature),
                          small.wm.sequence_length)
    agent.train_step(batch, buffer.sample_obs)
    counter = OpCounter()
    with counter:
        agent.train_step(batch, buffer.sample_obs)
    syncs = {name: counter.ops[name] for name in SYNC_OPS if counter.ops[name]}
    return {"aten_ops_per_iteration": sum(counter.ops.values()), "sync_prone_ops_per_iteration": syncs}


def cuda_kernels_and_syncs(agent: Agent, batch, sample_obs) -> dict:
    """Kernel launches and synchronising runtime calls in one train step, from the profiler (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        agent.train_step(batch, sample_obs)
        torch.cuda.synchronize()
    names = Counter(e.name for e in prof.events())
    launches = sum(n for name, n in names.items() if name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                "cudaLaunchKernelExC"))
    syncs = sum(n for name, n in names.items() if name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                             "cudaMemcpyAsync"))
    return {"kernel_launches_per_iteration": launches, "host_syncs_per_iteration": syncs - 1}


def env_step_seconds(game: str, config: Config, steps: int = 300) -> float:
    """Seconds per agent step of the real training env (frame skip 4, preprocessing) under random actions."""
    env = make_env(game, config.env)
    env.action_space.seed(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    env.close()
    return (time.perf_counter() - start) / steps


def policy_seconds(agent: Agent, frames: np.ndarray) -> float:
    policy = agent.make_policy(1)
    for obs in frames[:20]:
        policy.act(obs[None])
    start = time.perf_counter()
    for obs in frames:
        policy.act(obs[None])
    return (time.perf_counter() - start) / len(frames)


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    config = paper()
    N, M, L, H = args.wm_batch, args.imag_batch, config.wm.sequence_length, config.ac.horizon
    A = num_actions(args.game)
    bench = config.with_overrides({"wm.batch_size": N, "ac.batch_size": M})
    torch.manual_seed(0)
    agent = Agent(bench, A, device)
    buffer = filled_buffer(args.buffer_size, device, A)
    steps = {}

    def sample():
        starts = buffer.sample_starts(N, L, config.buffer.temperature)
        return agent._on_device(buffer.gather(starts, L))

    steps["replay sample+gather"], batch = timed(sample, args.reps, device)
    steps["world model update"], (_, start) = timed(lambda: agent.world_model_step(batch), args.reps, device)
    steps["restart pool encode"], restart = timed(lambda: agent.encode_logits(buffer.sample_obs(M)), args.reps,
                                                  device)
    steps["imagination (K/V cache)"], trajectory = timed(lambda: agent.imagine_trajectory(start, restart),
                                                         args.reps, device)
    steps["imagination (layer-input XL)"], _ = timed(
        lambda: agent.imagine_trajectory(start, restart, memory="layer_inputs"), args.reps, device)
    steps["imagination (vanilla)"], _ = timed(lambda: agent.imagine_trajectory(start, restart, memory="vanilla"),
                                              args.reps, device)
    steps["actor-critic update"], _ = timed(lambda: agent.ac_update(trajectory), args.reps, device)

    # Pretraining steps (spec §10.2): phi on N*L frames, psi and actor-critic on cached logits.
    logits = agent.encode_logits(buffer.obs[:5_001])
    pre_buffer = filled_buffer(5_000, device, A)
    steps["pretrain phi"], _ = timed(lambda: agent.pretrain_obs_step(pre_buffer.obs[:N * L]), args.reps, device)
    dyn_batch = pre_buffer.gather(torch.arange(N) * L, L, logits=logits)
    steps["pretrain psi"], _ = timed(lambda: agent.pretrain_dyn_step(dyn_batch), args.reps, device)
    ac_batch = pre_buffer.gather(torch.arange(M) * H, H, logits=logits)
    steps["pretrain actor-critic"], _ = timed(lambda: agent.pretrain_ac_step(ac_batch), args.reps, device)

    frames = real_frames(args.game, config, 200)
    env_s, policy_s = env_step_seconds(args.game, config), policy_seconds(agent, frames)
    return {"seconds": steps, "env_step_s": env_s, "policy_frame_s": policy_s, "agent": agent, "batch": batch,
            "buffer": buffer, "N": N, "M": M, "L": L, "H": H}


def project(m: dict, config: Config, episode_steps: int, eval_workers: int) -> dict:
    """Paper-size per-iteration cost and whole-run wall-clock from the per-sample phase costs."""
    s, N, M, L, H = m["seconds"], m["N"], m["M"], m["L"], m["H"]
    wm_rate = N * L / s["world model update"]
    imag_rate = M * H / s["imagination (K/V cache)"]
    imag_inputs_rate = M * H / s["imagination (layer-input XL)"]
    imag_vanilla_rate = M * H / s["imagination (vanilla)"]
    ac_rate = M * H / s["actor-critic update"]
    paper_n, paper_m = config.wm.batch_size, config.ac.batch_size
    per_iteration = {
        "replay sample+gather": s["replay sample+gather"],  # the multinomial cost depends on the buffer only
        "world model update": paper_n * L / wm_rate,
        "restart pool encode": s["restart pool encode"] * paper_m / M,
        "imagination": paper_m * H / imag_rate,
        "actor-critic update": paper_m * H / ac_rate,
    }
    iteration_s = sum(per_iteration.values())
    budget = compute_budget(config)
    pretrain_s = (budget.obs_pretrain * s["pretrain phi"] / (N * L)
                  + budget.dyn_pretrain * s["pretrain psi"] / (N * L)
                  + budget.ac_pretrain * s["pretrain actor-critic"] / (M * H))
    buf = config.buffer
    collection_s = buf.prefill * m["env_step_s"] + (buf.capacity - buf.prefill) * (m["env_step_s"]
                                                                                 + m["policy_frame_s"])
    episodes = (buf.capacity // config.schedule.eval_every - 1) * config.schedule.eval_episodes \
        + config.schedule.final_eval_episodes
    eval_s = episodes * episode_steps * (m["env_step_s"] + m["policy_frame_s"]) / eval_workers
    main_s = budget.train_steps * iteration_s
    total_h = (pretrain_s + main_s + collection_s + eval_s) / 3600
    return {
        "metrics": {
            "wm_train_samples_per_s": round(wm_rate, 1),
            "imagination_samples_per_s": round(imag_rate, 1),
            "imagination_layer_input_xl_samples_per_s": round(imag_inputs_rate, 1),
            "imagination_vanilla_samples_per_s": round(imag_vanilla_rate, 1),
            "imagination_speedup_cached_vs_vanilla": round(imag_rate / imag_vanilla_rate, 2),
            "imagination_speedup_cached_vs_layer_input_xl": round(imag_rate / imag_inputs_rate, 2),
            "policy_train_samples_per_s": round(ac_rate, 1),
            "train_iteration_ms": round(1e3 * iteration_s, 1),
            "projected_full_run_hours": round(total_h, 2),
        },
        "paper_size_iteration_ms_by_phase": {k: round(1e3 * v, 1) for k, v in per_iteration.items()},
        "projected_run_hours_by_phase": {"pretraining": round(pretrain_s / 3600, 3),
                                         "main loop (125k iterations)": round(main_s / 3600, 3),
                                         "collection (prefill + 95k steps)": round(collection_s / 3600, 3),
                                         f"evaluation ({episodes} episodes)": round(eval_s / 3600, 3)},
        "projection_assumptions": (f"per-sample costs from the reduced batches scale linearly to N={paper_n}, "
                                   f"M={paper_m}; {budget.train_steps:.0f} iterations; evaluation episodes of "
                                   f"{episode_steps} agent steps on {eval_workers} parallel workers; "
                                   "collection at batch 1 with the env stepped in the training process"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Boxing")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--buffer-size", type=int, default=50_000)
    parser.add_argument("--wm-batch", type=int, default=None, help="N (default: 100 on CUDA, 16 on CPU)")
    parser.add_argument("--imag-batch", type=int, default=None, help="M (default: 400 on CUDA, 64 on CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per phase (default 20 CUDA, 3 CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on CPU: OpenMP threads thrash on a shared 2-core VM)")
    parser.add_argument("--episode-steps", type=int, default=1_800, help="assumed evaluation episode length")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.wm_batch = args.wm_batch or (100 if cuda else 16)
    args.imag_batch = args.imag_batch or (400 if cuda else 64)
    args.reps = args.reps or (20 if cuda else 3)
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if min(args.wm_batch, args.imag_batch, args.reps) < 1 or args.buffer_size < 5_001:
        parser.error("batches and reps must be positive and --buffer-size at least 5001")
    if args.imag_batch > args.wm_batch * paper().wm.sequence_length:
        parser.error("--imag-batch cannot exceed wm-batch * 16 start candidates")
    record_path = args.record or ROOT / "results" / "benchmarks" / f"throughput_{device.type}.json"

    record = {"benchmark": "TWM training throughput, paper preset", **environment_record(device),
              "threads": torch.get_num_threads(), "buffer_size": args.buffer_size, "wm_batch": args.wm_batch,
              "imag_batch": args.imag_batch, "reps": args.reps, "precision": "fp32", "compile": False}
    print(f"measuring on {record['device']} (N={args.wm_batch}, M={args.imag_batch}, {args.reps} reps, "
          f"buffer {args.buffer_size:,}) ...", flush=True)
    m = measure(args, device)
    record.update(project(m, paper(), args.episode_steps, max(1, os.cpu_count() or 1)))
    record["measured_ms_at_reduced_batch"] = {k: round(1e3 * v, 1) for k, v in m["seconds"].items()}
    record["env_step_ms"] = round(1e3 * m["env_step_s"], 3)
    record["metrics"]["policy_fps_b1_1thread" if torch.get_num_threads() == 1 else
                      "policy_fps_b1_all_threads"] = round(1 / m["policy_frame_s"], 1)
    record["op_counts"] = count_ops(paper(), num_actions(args.game), device)
    if cuda:
        record["metrics"].update(cuda_kernels_and_syncs(m["agent"], m["batch"], m["buffer"].sample_obs))
    else:
        record["not_measured"] = ("kernel launches and host syncs per iteration, bf16/TF32 speed, compile and "
                                  "CUDA graphs, runs-per-GPU packing (K = 1, 2, 4): no GPU on this machine")
    record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"{'phase':<34}{'ms (measured, reduced batch)':>30}")
    for name, ms in record["measured_ms_at_reduced_batch"].items():
        print(f"{name:<34}{ms:>30.1f}")
    print(f"\n{'paper-size iteration phase':<34}{'ms':>30}")
    for name, ms in record["paper_size_iteration_ms_by_phase"].items():
        print(f"{name:<34}{ms:>30.1f}")
    print()
    for name, value in record["metrics"].items():
        print(f"{name:<50}{value:>14}")
    print(f"projected run: {record['projected_run_hours_by_phase']}")
    print(f"ATen ops per iteration: {record['op_counts']}")
    print(f"load average {record['load_average_at_start']} -> {record['load_average_at_end']}")
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {record_path}")


if __name__ == "__main__":
    main()
