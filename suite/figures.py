"""`twm-suite figures CHECKPOINT_OR_RUN`: the paper's qualitative world-model figures from one checkpoint.

Imagined trajectories (Fig. 5/9), several samples from one start next to the real frames (Fig. 12), a long
rollout (Fig. 13), attention maps for one step and averaged (Fig. 6/10/11), frame-stack reconstructions
(Fig. 14), balanced sampling (Fig. 2) and a GIF of an imagined rollout next to the real one. The data come
from `twm.inspection` (torch), the attention rollout from `analysis.attention` and the drawing from
`analysis.wm_figures` (numpy, matplotlib)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from twm.checkpoint import CheckpointError

SAMPLING_TEMPERATURES = (20.0, 10.0, 5.0, math.inf)


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file (ckpt-*.pt) or a run directory "
                                                      "(its newest checkpoint is used)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <run dir>/figures)")
    parser.add_argument("--horizon", type=int, default=16, help="imagined steps per strip and GIF (default 16)")
    parser.add_argument("--samples", type=int, default=4, help="imagined samples from the same start (default 4)")
    parser.add_argument("--long", type=int, default=240, help="steps of the long rollout (default 240)")
    parser.add_argument("--every", type=int, default=8, help="long rollout: draw every k-th frame (default 8)")
    parser.add_argument("--attention-steps", type=int, default=30,
                        help="imagined steps averaged in the mean attention map (default 30, as the "
                             "released renderer)")
    parser.add_argument("--sampling-entries", type=int, default=10000,
                        help="balanced-sampling simulation: final buffer size (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="start-state choice and sampling seed")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: the run's runtime.threads; 0 there = torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check(args: argparse.Namespace) -> None:
    for name in ("horizon", "samples", "long", "every", "attention_steps", "sampling_entries"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def run_figures(args: argparse.Namespace) -> int:
    """Load, imagine, draw; prints every written file. Exit 2 with a one-line error on bad input."""
    try:
        _check(args)
        from twm.inspection import load_run

        run = load_run(args.checkpoint, args.device)
    except (CheckpointError, ValueError) as err:
        print(f"twm-suite: error: {err}", file=sys.stderr)
        return 2
    import torch

    from analysis import wm_figures as wf
    from analysis.attention import attention_maps
    from twm import inspection as ti

    threads = args.threads or run.config.runtime.threads
    if threads > 0:
        torch.set_num_threads(threads)
    out = args.out or run.path.parent.parent / "figures"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    names = ti.action_names(run.game, run.agent.num_actions)
    where = f"{run.game}, seed {run.seed}, {run.path.name} at env step {run.env_step}"
    cfg = run.config
    written: list[Path] = []
    steps = ["trajectories", "long rollout", "attention", "frame stacks", "balanced sampling", "animation"]
    with tqdm(total=len(steps), desc="figures", unit="fig", disable=args.no_progress) as bar:
        # Fig. 5/9: one imagined trajectory with the policy's actions. Fig. 12: samples with the real actions.
        bar.set_postfix_str(steps[0])
        H = min(args.horizon, run.buffer.size - 1)
        start = ti.choose_start(run.buffer, H, rng)
        real = ti.real_segment(run, start, H)
        H = len(real.actions)
        policy = ti.imagine(run, start, H, samples=1, seed=args.seed)
        written += wf.save(wf.trajectory_strip(
            policy.frames, policy.actions, policy.rewards, policy.dones, ["imagined"], names,
            f"Imagined trajectory from buffer state {start}, policy actions ({where})"), out, "imagined_trajectory")
        same = ti.imagine(run, start, H, samples=args.samples, actions=real.actions, seed=args.seed + 1)
        frames = np.concatenate([real.stacks[None, :, -1], same.frames])
        written += wf.save(wf.trajectory_strip(
            frames, np.concatenate([real.actions[None], same.actions]),
            np.concatenate([real.rewards[None], same.rewards]), np.concatenate([real.dones[None], same.dones]),
            ["real"] + [f"sample {i + 1}" for i in range(args.samples)], names,
            f"{args.samples} imagined samples from the same start, real actions ({where})"),
            out, "imagined_samples")
        bar.update()

        # Fig. 13: a long rollout.
        bar.set_postfix_str(steps[1])
        long_start = ti.choose_start(run.buffer, 1, rng)
        long = ti.imagine(run, long_start, args.long, seed=args.seed + 2)
        written += wf.save(wf.long_rollout(
            long.frames[0], long.actions[0], long.rewards[0], long.dones[0], args.every, action_names=names,
            title=f"{args.long}-step imagined rollout, every {args.every}th frame ({where})"), out, "long_rollout")
        bar.update()

        # Fig. 6/10/11: attention of the current a token, one step and the mean over full windows.
        bar.set_postfix_str(steps[2])
        memory = cfg.dyn.memory_length
        attended = ti.imagine(run, start, memory + args.attention_steps, attention=True, seed=args.seed + 3)
        maps = attention_maps(attended.attention, run.agent.dyn_model.tokens_per_step, memory)
        written += wf.save(wf.attention_map(
            maps["raw"][-1, 0], maps["rollout"][-1, 0], maps["outside"][-1, 0], maps["kinds"],
            maps["token_rewards"][-1, 0], f"Attention at imagined step {attended.actions.shape[1]} ({where})"),
            out, "attention_step")
        full = slice(memory, None)  # steps whose window is complete
        written += wf.save(wf.attention_map(
            maps["raw"][full, 0].mean(0), maps["rollout"][full, 0].mean(0), maps["outside"][full, 0].mean(0),
            maps["kinds"], None, f"Mean attention over {args.attention_steps} imagined steps ({where})"),
            out, "attention_average")
        bar.update()

        # Fig. 14: real stacks, their reconstructions, and predicted stacks at the same steps.
        bar.set_postfix_str(steps[3])
        shown = np.unique(np.linspace(1, H, min(5, H)).round().astype(int))
        stacks = np.stack([real.stacks[shown], ti.reconstruct(run, start + shown), same.stacks[0, shown]])
        written += wf.save(wf.frame_stacks(
            stacks, ["real", "reconstructed", "imagined"], [f"step {t}" for t in shown],
            f"Frame stacks, oldest blue -> newest red ({where})"), out, "frame_stacks")
        bar.update()

        # Fig. 2: the real sampler on a simulated growing buffer.
        bar.set_postfix_str(steps[4])
        B, L = cfg.wm.batch_size, cfg.wm.sequence_length
        counts = ti.simulate_sampling(args.sampling_entries, SAMPLING_TEMPERATURES, B, L, args.seed)
        labelled = {("uniform" if math.isinf(tau) else f"τ = {tau:g}"): v for tau, v in counts.items()}
        written += wf.save(wf.balanced_sampling(
            labelled, f"Balanced sampling: {args.sampling_entries} entries, one new entry and one batch of "
                      f"{B} starts (length {L}) per step"), out, "balanced_sampling")
        bar.update()

        bar.set_postfix_str(steps[5])
        written.append(wf.side_by_side_gif(real.stacks[:, -1], same.frames[0], out / "imagined_vs_real.gif",
                                           same.rewards[0], title=run.game))
        bar.update()
    print(f"wrote {len(written)} files to {out}:")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m suite.figures`), the same as `twm-suite figures`."""
    parser = argparse.ArgumentParser(prog="twm-suite figures", description=__doc__.splitlines()[0])
    add_figures_arguments(parser)
    return run_figures(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
