"""`twm-train`: run, resume and evaluate one TWM run; print parameter counts.

Exit codes of `run`: 0 finished (or already done), 1 failed (FAILED holds the reason), 2 bad
input (one line on stderr, nothing started), 3 stopped by SIGTERM/SIGUSR1/SIGINT after a
checkpoint (rerun the same command to resume), 4 busy: another live trainer holds the run
directory's lock (one line on stderr, nothing done).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from twm import run_record as rr
from twm.config import Config, ConfigError, parse_overrides, preset
from twm.games import GAMES, UnknownGameError, get_game

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_BUSY = 0, 1, 2, 3, 4
EXTRA_GAMES = ("Catch",)  # the toy pixel task of benchmarks/learning_check.py


class UsageError(Exception):
    """Bad input found before any work started."""


class RunBusyError(Exception):
    """Another live trainer holds the run directory's lock."""


def check_game(name: str) -> str:
    if name in EXTRA_GAMES:
        return name
    return get_game(name).name


def build_config(preset_name: str, overrides: list[str], device: str | None) -> Config:
    flat = parse_overrides(overrides)
    if device is not None:
        flat["runtime.device"] = device
    return preset(preset_name).with_overrides(flat)


def parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --tag {item!r}: expected key=value")
        tags[key] = value
    return tags


# ---------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from twm.checkpoint import CheckpointError
    from twm.tracking import TrackingError, default_tracking_uri

    game = check_game(args.game)
    config = build_config(args.preset, args.set, args.device)
    tags = parse_tags(args.tag)
    run_dir = Path(args.out)
    if (run_dir / rr.DONE).exists():
        print(f"already done: {run_dir / rr.DONE}")
        return EXIT_OK
    meta = {"game": game, "seed": args.seed, "preset": args.preset, "config_hash": config.hash()}
    meta_path = run_dir / rr.CONFIG
    if meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if any(saved.get(k) != v for k, v in meta.items()):
            raise UsageError(f"{run_dir} holds a different run ({saved.get('game')} seed {saved.get('seed')}, "
                             f"config {saved.get('config_hash')}); use another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output folder {run_dir} is not writable: {err.strerror}") from None
    try:
        run_lock = rr.RunLock.acquire(run_dir)  # held by this process for the rest of its life
    except OSError as err:  # e.g. a Lustre mount without flock support
        raise UsageError(f"cannot take the run lock in {run_dir}: {err.strerror} (needs flock)") from None
    if run_lock is None:
        holder = rr.lock_holder(run_dir) or {}
        raise RunBusyError(f"{run_dir} is in use by another trainer (pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')}); nothing done")
    (run_dir / rr.FAILED).unlink(missing_ok=True)
    meta_path.write_text(json.dumps(meta | {"config": config.to_dict()}, indent=1, default=list))

    from twm.tracking import Tracker
    from twm.train import NonFiniteLossError, StopRequested, Trainer

    uri = args.tracking_uri or default_tracking_uri(run_dir)
    try:
        tracker = Tracker(uri, experiment=args.experiment, run_name=args.run_name or f"{game}-s{args.seed}",
                          tags={rr.TAG_GAME: game, rr.TAG_SEED: str(args.seed), rr.TAG_PRESET: args.preset,
                                rr.TAG_CONFIG_HASH: config.hash()} | tags)
    except TrackingError as err:
        raise UsageError(str(err)) from None
    try:
        trainer = Trainer(config, game, args.seed, run_dir, tracker, progress=not args.no_progress)
    except ValueError as err:  # e.g. CUDA requested but absent
        raise UsageError(str(err)) from None

    def on_signal(signum, frame):
        trainer.log(f"received {signal.Signals(signum).name}: checkpointing and stopping")
        trainer.request_stop()

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        trainer.run()
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    except StopRequested as err:
        print(f"twm-train: {err}; rerun the same command to resume", file=sys.stderr)
        return EXIT_STOPPED
    except NonFiniteLossError as err:
        print(f"twm-train: {err}; the last good checkpoint in {run_dir / 'checkpoints'} is kept", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------------------------- params
def cmd_params(args: argparse.Namespace) -> int:
    from twm.agent import Agent
    from twm.envs import num_actions

    game = check_game(args.game)
    config = build_config(args.preset, args.set, "cpu")
    agent = Agent(config, num_actions(game), "cpu")
    print(json.dumps({"game": game, "num_actions": num_actions(game), **agent.param_counts()}, indent=1))
    return EXIT_OK


# ----------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from twm.agent import Agent
    from twm.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
    from twm.envs import evaluate, num_actions
    from twm.train import resolve_device

    path = Path(args.checkpoint)
    if path.is_dir():
        run_dir = path.parent if path.name == rr.CHECKPOINTS else path
        found = list_checkpoints(run_dir)
        if not found:
            raise UsageError(f"no checkpoint in {run_dir}")
        path = found[-1]
    elif not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    config = Config.from_json(ckpt["config"])
    game, seed = ckpt["game"], int(args.seed if args.seed is not None else ckpt["seed"])
    device = resolve_device(args.device or "auto")
    torch.manual_seed(seed)
    agent = Agent(config, num_actions(game), device)
    agent.load_state_dict(ckpt["agent"])
    envs = args.envs or min(args.episodes, 8)
    scores = evaluate(game, config.env, agent.make_policy(envs), args.episodes, envs, seed=seed,
                      progress=True)
    print(json.dumps({"checkpoint": str(path), "game": game, "episodes": len(scores), "mean": float(np.mean(scores)),
                      "std": float(np.std(scores)), "scores": scores.tolist()}, indent=1))
    return EXIT_OK


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twm-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train (or resume) one run: one game, one seed")
    run.add_argument("--game", required=True, help=f"paper name, one of: {', '.join(GAMES)}")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--preset", default="paper", help="paper | smoke")
    run.add_argument("--out", required=True, help="run directory (rerun on it to resume)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. buffer.temperature=inf (repeatable)")
    run.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite file in --out)")
    run.add_argument("--experiment", default="twm", help="MLflow experiment name")
    run.add_argument("--run-name", default=None)
    run.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag")
    run.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: config, auto)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    run.set_defaults(func=cmd_run)

    params = sub.add_parser("params", help="print each model's parameter count as JSON")
    params.add_argument("--game", required=True)
    params.add_argument("--preset", default="paper")
    params.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    params.set_defaults(func=cmd_params)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on whole games")
    ev.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder, or a .pt file")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--envs", type=int, default=0, help="parallel envs (default: min(episodes, 8))")
    ev.add_argument("--seed", type=int, default=None)
    ev.add_argument("--device", default=None)
    ev.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError, UnknownGameError) as err:
        print(f"twm-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunBusyError as err:
        print(f"twm-train: error: {err}", file=sys.stderr)
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
