"""Training throughput on the `paper` preset (issues 5 and 14): median ms per training iteration and per phase,
samples/s in the paper's units (world model 100x16 per update, imagination and policy training 400x15), and
a projected wall-clock for a whole run (pretraining, 125,000 iterations, collection, 19 evaluations of 10
episodes and the final 100) from the measured phase costs, for one runtime variant:

  fp32 (the default), tf32, bf16 (runtime.precision), compile (runtime.compile), static
  (runtime.static_imagination), graphs (runtime.cuda_graphs with static imagination); "+" combines them
  (e.g. bf16+graphs). Every variant but fp32 also records its drift against fp32 from the same weights and
  inputs: one world-model pass with replayed latent draws, and a few whole train steps under one seed.

fp32 also times imagination with the released layer-input memory and with the vanilla transformer (the
paper's comparison). On CUDA the record counts kernel launches (host launch calls, graph launches and the
kernels the GPU ran, from torch.profiler's CUDA activity) and host syncs (torch.cuda's sync debug mode) per
train step and per iteration (device-side replay sampling + gather + train step + the trainer's one metric
fetch); on CPU it counts dispatched ATen ops and sync-prone ops instead.

On a CPU a paper-size step takes tens of seconds, so the phases run at reduced batch sizes (--wm-batch,
--imag-batch; per-sample costs scale linearly to the paper's N=100, M=400, which is conservative) with paper
widths, sequence length and horizon, and a realistic buffer. `--preset smoke` measures the tiny model (a
quick end-to-end check of this script, not a figure to report). Without gymnasium/ale-py the env step cost
is the CPU record's and the policy acts on random frames (said in the record).

`--loop-seconds S --start-at T` is the packing worker (benchmarks/gpu_evidence.py): whole iterations in a
loop from wall-clock time T for S seconds; prints one PACK_RESULT JSON line.

Usage: python benchmarks/throughput.py [--variant fp32] [--buffer-size 50000] [--wm-batch N] [--imag-batch M]
       [--reps R] [--threads 1] [--record PATH]
Prints a table and writes results/benchmarks/throughput_{cpu,cuda}[_VARIANT].json (also while it runs, with
"complete": false, so a stopped run leaves what it measured)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_fps import environment_record, real_frames  # noqa: E402

from twm.agent import Agent  # noqa: E402
from twm.config import Config, ConfigError, preset  # noqa: E402
from twm.games import get_game  # noqa: E402
from twm.graphs import WARMUP_CALLS  # noqa: E402
from twm.replay import ReplayBuffer  # noqa: E402
from twm.sampling import balanced_starts  # noqa: E402
from twm.schedule import compute_budget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "equal")
VARIANTS = {"fp32": {}, "tf32": {"runtime.precision": "tf32"}, "bf16": {"runtime.precision": "bf16"},
            "compile": {"runtime.compile": True}, "static": {"runtime.static_imagination": True},
            "graphs": {"runtime.static_imagination": True, "runtime.cuda_graphs": True}}
CPU_ENV_STEP_MS = 0.859  # results/benchmarks/throughput_cpu.json: used only when ALE is not installed
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
# Drift acceptance (the CPU parity tests' tolerances): world-model-pass losses relative, h absolute; whole train
# steps relative, for variants that keep fp32 maths (compile, graphs, static).
DRIFT_LIMITS = {"pass_loss_rel": 1e-3, "pass_h_abs": 0.05, "train_step_rel": 1e-3}


def variant_overrides(name: str) -> dict:
    """Config overrides of a variant name like "bf16+graphs" (a ValueError names the valid parts)."""
    overrides: dict = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ValueError(f"unknown variant part {part!r}; parts are {', '.join(VARIANTS)} (joined by +)")
        overrides.update(VARIANTS[part])
    return overrides


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, device: torch.device,
          warmup: int = 1) -> tuple[float, float, object]:
    """Median seconds of fn over reps calls after `warmup` calls; returns (median, first call's seconds, last
    result). The first call includes compilation or graph capture where a variant has them."""
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        result = fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), first, result


def filled_buffer(size: int, device: torch.device, A: int) -> ReplayBuffer:
    """A buffer of `size` transitions (random pixels, actions, rewards, 1% episode ends) with visit counts
    as after size*1.3 updates of 100 starts; pixels are drawn on the buffer's device."""
    buffer = ReplayBuffer(size, (4, 64, 64), device)
    g = torch.Generator(device).manual_seed(0)
    for lo in range(0, size + 1, 10_000):
        hi = min(lo + 10_000, size + 1)
        buffer.obs[lo:hi] = torch.randint(0, 256, (hi - lo, 4, 64, 64), dtype=torch.uint8, generator=g,
                                          device=device)
    g = torch.Generator().manual_seed(0)
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


def host_syncs(fn: Callable[[], object]) -> int:
    """Synchronising CUDA calls made by fn, counted by torch.cuda's sync debug mode."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def cuda_launches(fn: Callable[[], object]) -> dict:
    """Host launch calls (kernels, graphs) and the kernels and device-to-host copies the GPU ran, for fn."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.events()
    host = Counter(e.name for e in events if e.device_type == DeviceType.CPU)
    gpu = [e.name for e in events if e.device_type == DeviceType.CUDA]
    return {"kernel_launches": sum(host[name] for name in LAUNCH_CALLS),
            "graph_launches": host["cudaGraphLaunch"],
            "gpu_kernels": sum(not name.startswith(("Memcpy", "Memset")) for name in gpu),
            "device_to_host_copies": sum(name.startswith("Memcpy DtoH") for name in gpu)}


def env_step_seconds(game: str, config: Config, steps: int = 300) -> float | None:
    """Seconds per agent step of the real training env under random actions; None without ALE."""
    try:
        from twm.envs import make_env
    except ImportError:
        return None
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


def acting_frames(game: str, config: Config, count: int) -> tuple[np.ndarray, bool]:
    """Real evaluation frames, or random ones without ALE (speed does not depend on pixel values)."""
    try:
        return real_frames(game, config, count), True
    except ImportError:
        return np.random.default_rng(0).integers(0, 256, (count, 4, 64, 64), dtype=np.uint8), False


def policy_seconds(agent: Agent, frames: torch.Tensor, on_device: bool) -> float:
    """Seconds per collection act at batch 1 on buffer frames (on the agent's device), the action read back as
    the trainer does; on_device=False copies each frame to the host first (twm/train.py today)."""
    policy = agent.make_policy(1)

    def act(obs: torch.Tensor) -> int:
        return int(policy.act(obs[None] if on_device else obs[None].cpu().numpy())[0])

    for obs in frames[:20]:
        act(obs)
    start = time.perf_counter()
    for obs in frames:
        act(obs)
    return (time.perf_counter() - start) / len(frames)


# ------------------------------------------------------------------------------------------- phases
def build(args: argparse.Namespace, device: torch.device) -> tuple[Config, Config, Agent, ReplayBuffer, int]:
    """The preset's config, the benchmark config (variant, reduced batches), the agent and a filled buffer."""
    base = preset(args.preset)
    config = base.with_overrides(variant_overrides(args.variant) | {"wm.batch_size": args.wm_batch,
                                                                    "ac.batch_size": args.imag_batch})
    A = get_game(args.game).num_actions
    if config.runtime.compile:  # the drift check compiles a second agent; today's imagination grows its shapes
        from torch._dynamo import config as dynamo

        for name in ("recompile_limit", "cache_size_limit"):  # the name differs across torch versions
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), 64))
    torch.manual_seed(0)
    agent = Agent(config, A, device)
    return base, config, agent, filled_buffer(args.buffer_size, device, A), A


def measure(args: argparse.Namespace, device: torch.device, config: Config, agent: Agent,
            buffer: ReplayBuffer) -> dict:
    N, M, L, H = args.wm_batch, args.imag_batch, config.wm.sequence_length, config.ac.horizon
    warmup = WARMUP_CALLS + 1 if agent.cuda_graphs else 1  # graphs: eager warm-ups, then the capture
    steps, first = {}, {}

    def phase(name: str, fn: Callable[[], object], calls: int = warmup) -> object:
        steps[name], first[name], result = timed(fn, args.reps, device, calls)
        return result

    def sample() -> object:
        starts = buffer.sample_starts(N, L, config.buffer.temperature)
        return agent._on_device(buffer.gather(starts, L))

    visits = buffer.visits.to(device)

    def sample_on_device() -> object:
        starts = balanced_starts(visits, buffer.size - L + 1, N, config.buffer.temperature)
        return agent._on_device(buffer.gather(starts, L))

    batch = phase("replay sample+gather", sample, 1)
    phase("replay sample+gather (device sampler)", sample_on_device, 1)
    _, start = phase("world model update", lambda: agent.phase("world_model_step")(batch))
    restart_obs = buffer.sample_obs(M)
    restart = phase("restart pool encode", lambda: agent.phase("encode_logits")(restart_obs))
    trajectory = phase("imagination (K/V cache)", lambda: agent.phase("imagine_trajectory")(start, restart))
    if args.reference_paths:
        for memory, name in (("layer_inputs", "imagination (layer-input XL)"), ("vanilla", "imagination (vanilla)")):
            phase(name, lambda memory=memory: agent.imagine_trajectory(start, restart, memory=memory), 1)
    phase("actor-critic update", lambda: agent.phase("ac_update")(trajectory))

    # Pretraining steps (spec §10.2): phi on N*L frames, psi and actor-critic on cached logits (always eager).
    pre_buffer = filled_buffer(5_000, device, agent.num_actions)
    logits = agent.encode_logits(pre_buffer.obs[:5_001])
    phase("pretrain phi", lambda: agent.pretrain_obs_step(pre_buffer.obs[:N * L]), 1)
    dyn_batch = pre_buffer.gather(torch.arange(N) * L, L, logits=logits)
    phase("pretrain psi", lambda: agent.pretrain_dyn_step(dyn_batch), 1)
    ac_batch = pre_buffer.gather(torch.arange(M) * H, H, logits=logits)
    phase("pretrain actor-critic", lambda: agent.pretrain_ac_step(ac_batch), 1)

    frames, real = acting_frames(args.game, config, 200)
    frames = torch.from_numpy(frames).to(device)
    env_s = env_step_seconds(args.game, config)
    return {"seconds": steps, "first_call_seconds": first, "env_step_s": env_s,
            "policy_frame_s": policy_seconds(agent, frames, on_device=False),
            "policy_frame_on_device_s": policy_seconds(agent, frames, on_device=True), "real_frames": real,
            "batch": batch, "start": start, "restart": restart, "trajectory": trajectory, "visits": visits,
            "N": N, "M": M, "L": L, "H": H}


def project(m: dict, config: Config, episode_steps: int, eval_workers: int) -> dict:
    """Paper-size per-iteration cost and whole-run wall-clock from the per-sample phase costs."""
    s, N, M, L, H = m["seconds"], m["N"], m["M"], m["L"], m["H"]
    wm_rate = N * L / s["world model update"]
    imag_rate = M * H / s["imagination (K/V cache)"]
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
    env_s = m["env_step_s"] if m["env_step_s"] is not None else CPU_ENV_STEP_MS / 1e3
    collection_s = buf.prefill * env_s + (buf.capacity - buf.prefill) * (env_s + m["policy_frame_s"])
    episodes = (buf.capacity // config.schedule.eval_every - 1) * config.schedule.eval_episodes \
        + config.schedule.final_eval_episodes
    eval_s = episodes * episode_steps * (env_s + m["policy_frame_s"]) / eval_workers
    main_s = budget.train_steps * iteration_s
    total_h = (pretrain_s + main_s + collection_s + eval_s) / 3600
    metrics = {
        "wm_train_samples_per_s": round(wm_rate, 1),
        "imagination_samples_per_s": round(imag_rate, 1),
        "policy_train_samples_per_s": round(ac_rate, 1),
        "train_iteration_ms": round(1e3 * iteration_s, 2),
        "projected_full_run_hours": round(total_h, 3),
    }
    for name, key in (("imagination (layer-input XL)", "layer_input_xl"), ("imagination (vanilla)", "vanilla")):
        if name in s:
            metrics[f"imagination_{key}_samples_per_s"] = round(M * H / s[name], 1)
            metrics[f"imagination_speedup_cached_vs_{key}"] = round(s[name] / s["imagination (K/V cache)"], 2)
    env_note = ("the env step measured here" if m["env_step_s"] is not None else
                f"an env step of {CPU_ENV_STEP_MS} ms (the CPU record; ALE is not installed here)")
    return {
        "metrics": metrics,
        "paper_size_iteration_ms_by_phase": {k: round(1e3 * v, 3) for k, v in per_iteration.items()},
        "projected_run_hours_by_phase": {"pretraining": round(pretrain_s / 3600, 4),
                                         "main loop": round(main_s / 3600, 4),
                                         "collection": round(collection_s / 3600, 4),
                                         "evaluation": round(eval_s / 3600, 4)},
        "projection_assumptions": (f"per-sample costs from the measured batches scale linearly to N={paper_n}, "
                                   f"M={paper_m}; {budget.train_steps:.0f} iterations; replay sampling as "
                                   f"twm/train.py does it today (CPU visit counts); {episodes} evaluation "
                                   f"episodes of {episode_steps} agent steps on {eval_workers} parallel workers; "
                                   f"collection at batch 1 with {env_note}, the frame copied to the host as "
                                   "twm/train.py does today"),
    }


# -------------------------------------------------------------------------------------------- drift
def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def drift_against_fp32(args: argparse.Namespace, base: Config, device: torch.device, buffer: ReplayBuffer,
                       A: int, steps: int = WARMUP_CALLS + 2) -> dict:
    """The variant against plain fp32 eager from the same weights, dropout off: (a) one world-model pass with
    the latent draws replayed (losses relative, h and decoded means absolute); (b) `steps` whole train steps
    under one seed on the same batches (every metric relative; the weights after them), which covers the
    graphs' warm-up, capture and replay."""
    from twm.observation_model import sample_index

    N, L = args.wm_batch, base.wm.sequence_length
    common = {"wm.batch_size": N, "ac.batch_size": args.imag_batch, "dyn.dropout": 0.0}
    agents = []
    for overrides in ({}, variant_overrides(args.variant)):
        torch.manual_seed(0)
        agents.append(Agent(base.with_overrides(common | overrides), A, device))
    reference, variant = agents
    g = torch.Generator().manual_seed(1)
    batches = [reference._on_device(buffer.gather(torch.randperm(buffer.size - L, generator=g)[:N] + 1, L))
               for _ in range(steps)]

    logits = reference.encode_logits(batches[0].obs[:, :L + 1].flatten(0, 1)).unflatten(0, (N, L + 1))
    z_index = sample_index(logits)
    passes = [agent.world_model_pass(batches[0], z_index) for agent in agents]
    losses = ("dyn/latent_loss", "dyn/reward_loss", "dyn/discount_loss", "obs/consistency_loss", "obs/entropy")
    world_model_pass = {name: relative(passes[1].metrics[name], passes[0].metrics[name]) for name in losses}
    for name in ("h", "decoded"):
        a, b = (getattr(p, name).detach().float() for p in passes)
        world_model_pass[f"{name}_max_abs"] = float((a - b).abs().max())
    del passes

    pool = buffer.sample_obs(512)
    history = []
    for agent in agents:
        torch.manual_seed(2)
        last = {}
        for batch in batches:
            metrics = agent.train_step(batch, lambda n: pool[torch.randint(512, (n,), device=pool.device)])
            last = {k: v.detach().double().clone() for k, v in metrics.items()}
        history.append(last)
    per_metric = {k: relative(history[1][k], history[0][k]) for k in history[0]}
    params = max(float((p.double() - q.double()).abs().max())
                 for p, q in zip(variant.parameters(), reference.parameters(), strict=True))
    same_maths = "bf16" not in args.variant and "tf32" not in args.variant
    pass_ok = (max(world_model_pass[n] for n in losses) <= DRIFT_LIMITS["pass_loss_rel"]
               and world_model_pass["h_max_abs"] <= DRIFT_LIMITS["pass_h_abs"])
    train_ok = max(per_metric.values()) <= DRIFT_LIMITS["train_step_rel"]
    return {"world_model_pass": world_model_pass,
            "train_steps": {"steps": steps, "max_relative_metric_difference": max(per_metric.values()),
                            "relative_metric_difference": per_metric, "max_abs_weight_difference": params},
            "limits": DRIFT_LIMITS,
            "within_limits": bool(pass_ok and (train_ok or not same_maths)),
            "note": ("train-step limits apply to variants with fp32 maths (compile, static, graphs); with bf16 or "
                     "TF32 the sampled latents and actions diverge after a few steps, so only the pass is judged")}


# -------------------------------------------------------------------------------------------- iteration
def iteration_fn(agent: Agent, buffer: ReplayBuffer, visits: torch.Tensor, config: Config,
                 device_sampler: bool) -> Callable[[], None]:
    """One main-loop iteration: replay sampling, gather, train step and the trainer's one metric fetch."""
    N, L, tau = config.wm.batch_size, config.wm.sequence_length, config.buffer.temperature

    def iteration() -> None:
        if device_sampler:
            starts = balanced_starts(visits, buffer.size - L + 1, N, tau)
        else:
            starts = buffer.sample_starts(N, L, tau)
        metrics = agent.train_step(buffer.gather(starts, L), buffer.sample_obs)
        torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).cpu()

    return iteration


def launches_and_syncs(agent: Agent, m: dict, buffer: ReplayBuffer, config: Config) -> dict:
    """Kernel launches and host syncs of one train step and of one whole iteration (after warm-up)."""
    batch = m["batch"]

    def step() -> None:
        agent.train_step(batch, buffer.sample_obs)

    figures = {}
    for name, fn in (("train_step", step),
                     ("iteration", iteration_fn(agent, buffer, m["visits"], config, device_sampler=True)),
                     ("iteration_cpu_sampler", iteration_fn(agent, buffer, m["visits"], config, False))):
        for _ in range(WARMUP_CALLS + 1 if agent.cuda_graphs else 1):
            fn()
        launches = cuda_launches(fn)
        figures[f"kernel_launches_per_{name}"] = launches["kernel_launches"]
        figures[f"graph_launches_per_{name}"] = launches["graph_launches"]
        figures[f"gpu_kernels_per_{name}"] = launches["gpu_kernels"]
        figures[f"device_to_host_copies_per_{name}"] = launches["device_to_host_copies"]
        figures[f"host_syncs_per_{name}"] = host_syncs(fn)
    return figures


def pack_worker(args: argparse.Namespace, device: torch.device) -> None:
    """Packing worker: whole iterations at the preset's batches. Window i is [start_at + i*S, start_at +
    (i+1)*S) for S = --loop-seconds; this worker loops in window i when its --pack-rank is below the i-th of
    --pack-sizes (so one set of processes measures 1, 2, 4 runs at once in turn) and sleeps otherwise."""
    _, config, agent, buffer, _ = build(args, device)
    iteration = iteration_fn(agent, buffer, buffer.visits.to(device), config, device_sampler=True)
    for _ in range(WARMUP_CALLS + 2):
        iteration()
    synchronize(device)
    ready = time.time()
    windows = []
    for i, size in enumerate(args.pack_sizes):
        begin = args.start_at + i * args.loop_seconds
        time.sleep(max(0.0, begin - time.time()))
        if args.pack_rank >= size:
            continue
        count, start = 0, time.time()
        while time.time() < begin + args.loop_seconds:
            iteration()
            count += 1
        synchronize(device)
        windows.append({"runs": size, "iterations": count, "seconds": time.time() - start})
    print("PACK_RESULT " + json.dumps({"rank": args.pack_rank, "ready": ready, "late": ready > args.start_at,
                                       "windows": windows}), flush=True)


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, torch.device]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Boxing")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--variant", default="fp32", help=f"one of {', '.join(VARIANTS)}, or parts joined by +")
    parser.add_argument("--preset", default="paper", help="paper | smoke (smoke: a quick check of this script)")
    parser.add_argument("--buffer-size", type=int, default=50_000)
    parser.add_argument("--wm-batch", type=int, default=None, help="N (default: the preset's on CUDA, 16 on CPU)")
    parser.add_argument("--imag-batch", type=int, default=None, help="M (default: the preset's on CUDA, 64 on CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per phase (default 20 CUDA, 3 CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on CPU: OpenMP threads thrash on a shared 2-core VM)")
    parser.add_argument("--reference-paths", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the layer-input and vanilla imagination (default: for fp32 only)")
    parser.add_argument("--drift", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the drift against fp32 (default: for every variant but fp32)")
    parser.add_argument("--episode-steps", type=int, default=1_800, help="assumed evaluation episode length")
    parser.add_argument("--loop-seconds", type=float, default=None, help="packing worker: seconds per window")
    parser.add_argument("--start-at", type=float, default=0.0, help="packing worker: wall-clock start (epoch s)")
    parser.add_argument("--pack-rank", type=int, default=0, help="packing worker: this worker's rank")
    parser.add_argument("--pack-sizes", type=lambda text: [int(k) for k in text.split(",")], default=[1],
                        help="packing worker: runs per window, e.g. 1,2,4")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        variant_overrides(args.variant)
        base = preset(args.preset)
        get_game(args.game)
    except (ValueError, ConfigError) as err:
        parser.error(str(err))
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.wm_batch = args.wm_batch or (base.wm.batch_size if cuda else min(16, base.wm.batch_size))
    args.imag_batch = args.imag_batch or (base.ac.batch_size if cuda else min(64, base.ac.batch_size))
    args.reps = args.reps or (20 if cuda else 3)
    plain = not set(args.variant.split("+")) & {"static", "graphs"}
    args.reference_paths = args.variant == "fp32" if args.reference_paths is None else args.reference_paths
    if args.reference_paths and not plain:
        parser.error("--reference-paths needs a variant without static imagination")
    args.drift = args.variant != "fp32" if args.drift is None else args.drift
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if min(args.wm_batch, args.imag_batch, args.reps) < 1 or args.buffer_size < 5_001:
        parser.error("batches and reps must be positive and --buffer-size at least 5001")
    if args.imag_batch > args.wm_batch * base.wm.sequence_length:
        parser.error(f"--imag-batch cannot exceed wm-batch * {base.wm.sequence_length} start candidates")
    try:
        base.with_overrides(variant_overrides(args.variant) | {"runtime.device": device.type})
        if "compile" in args.variant and not cuda:
            raise ConfigError("runtime.compile=True needs a CUDA device")
    except ConfigError as err:
        parser.error(str(err))
    return args, device


def main(argv: list[str] | None = None) -> None:
    args, device = parse_args(argv)
    if args.loop_seconds is not None:
        pack_worker(args, device)
        return
    cuda = device.type == "cuda"
    suffix = "" if args.variant == "fp32" and args.preset == "paper" else \
        "_" + "-".join(([] if args.preset == "paper" else [args.preset]) + [args.variant.replace("+", "-")])
    record_path = args.record or ROOT / "results" / "benchmarks" / f"throughput_{device.type}{suffix}.json"
    record = {"benchmark": "TWM training throughput", "preset": args.preset, "variant": args.variant,
              "overrides": variant_overrides(args.variant), **environment_record(device),
              "threads": torch.get_num_threads(), "buffer_size": args.buffer_size, "wm_batch": args.wm_batch,
              "imag_batch": args.imag_batch, "reps": args.reps, "complete": False}

    def save(final: bool = False) -> None:
        record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        record["complete"] = final
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")

    print(f"measuring {args.variant} on {record['device']} ({args.preset}, N={args.wm_batch}, M={args.imag_batch}, "
          f"{args.reps} reps, buffer {args.buffer_size:,}) ...", flush=True)
    base, config, agent, buffer, A = build(args, device)
    m = measure(args, device, config, agent, buffer)
    record.update(project(m, base, args.episode_steps, max(1, os.cpu_count() or 1)))
    record["measured_ms"] = {k: round(1e3 * v, 3) for k, v in m["seconds"].items()}
    record["first_call_ms"] = {k: round(1e3 * v, 1) for k, v in m["first_call_seconds"].items()}
    record["env_step_ms"] = None if m["env_step_s"] is None else round(1e3 * m["env_step_s"], 3)
    record["policy_act_ms"] = {"frame via host (today)": round(1e3 * m["policy_frame_s"], 3),
                               "frame on device": round(1e3 * m["policy_frame_on_device_s"], 3),
                               "real frames": m["real_frames"]}
    save()
    if cuda:
        record["metrics"].update(launches_and_syncs(agent, m, buffer, config))
        save()
    else:
        record["not_measured"] = ("kernel launches and host syncs per iteration, bf16/TF32 speed, compile and "
                                  "CUDA graph speed, runs-per-GPU packing: no GPU on this machine")
    if args.drift:
        print("drift against fp32 ...", flush=True)
        record["drift_against_fp32"] = drift_against_fp32(args, base, device, buffer, A)
        save()
    if not (cuda and set(args.variant.split("+")) & {"graphs", "compile"}):  # replays dispatch nothing
        record["op_counts"] = count_ops(base.with_overrides(variant_overrides(args.variant)), A, device)
    save(final=True)
    print_summary(record)
    print(f"wrote {record_path}")


def print_summary(record: dict) -> None:
    print(f"{'phase':<42}{'ms (measured batch)':>22}")
    for name, ms in record["measured_ms"].items():
        print(f"{name:<42}{ms:>22.3f}")
    print(f"\n{'paper-size iteration phase':<42}{'ms':>22}")
    for name, ms in record["paper_size_iteration_ms_by_phase"].items():
        print(f"{name:<42}{ms:>22.3f}")
    print()
    for name, value in record["metrics"].items():
        print(f"{name:<50}{value:>14}")
    print(f"projected run (h): {record['projected_run_hours_by_phase']}")
    if "drift_against_fp32" in record:
        drift = record["drift_against_fp32"]
        print(f"drift vs fp32: pass {drift['world_model_pass']}; train steps max rel "
              f"{drift['train_steps']['max_relative_metric_difference']:.2e}; within limits {drift['within_limits']}")
    if "op_counts" in record:
        print(f"ATen ops per iteration: {record['op_counts']}")
    print(f"load average {record['load_average_at_start']} -> {record['load_average_at_end']}")


if __name__ == "__main__":
    main()
