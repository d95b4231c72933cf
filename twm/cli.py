"""`twm-train`: run, resume and evaluate one TWM run; print parameter counts.

Exit codes of `run`: 0 finished (or already done), 1 failed (FAILED holds the reason, e.g. a full disk),
2 bad input (one line on stderr; nothing started and nothing written), 3 stopped by SIGTERM/SIGUSR1/SIGINT
after a checkpoint, or during start-up before any work (rerun the same command to start or resume), 4 busy:
another live trainer holds the run directory's lock (one line on stderr, nothing done).
Every value is checked before the trainer imports torch; what needs torch (the device) and the checkpoint
to resume from are checked before anything is written to the run directory.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
from pathlib import Path

from twm import run_record as rr
from twm.config import Config, ConfigError, check_device, parse_overrides, preset
from twm.games import GAMES, UnknownGameError, get_game

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_BUSY = 0, 1, 2, 3, 4
EXTRA_GAMES = ("Catch",)  # the toy pixel task of benchmarks/learning_check.py
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class UsageError(Exception):
    """Bad input found before any work started."""


class StartupStopped(Exception):
    """A stop signal arrived before training began; nothing was started."""


class RunBusyError(Exception):
    """Another live trainer holds the run directory's lock."""


def check_game(name: str) -> str:
    if name in EXTRA_GAMES:
        return name
    return get_game(name).name


def check_seed(seed: int) -> int:
    if not 0 <= seed <= rr.MAX_SEED:
        raise UsageError(f"--seed must be in 0..{rr.MAX_SEED}, got {seed}")
    return seed


def check_at_least_1(option: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{option} must be >= 1, got {value}")
    return value


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


class StartupSignals:
    """The stop signals from the first line of `cmd_run` on: until the trainer takes them over, a signal is
    remembered and start-up ends at its next `check()` (exit 3, nothing started); then they go to the trainer."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.trainer = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.trainer is None:
            self.received = self.received or name
        else:
            self.trainer.log(f"received {name}: checkpointing and stopping")
            self.trainer.request_stop()

    def check(self) -> None:
        if self.received:
            raise StartupStopped(f"stopped by {self.received} during start-up, before training began; "
                                 "rerun the same command to start or resume")

    def hand_over(self, trainer) -> None:
        """From now on signals stop the trainer at its next safe point; one that came before stops start-up."""
        self.trainer = trainer
        self.check()


def take_run_lock(run_dir: Path) -> rr.RunLock:
    """The run directory's lock, or RunBusyError when a live trainer holds it."""
    try:
        run_lock = rr.RunLock.acquire(run_dir, announce=False)
    except OSError as err:  # e.g. a Lustre mount without flock support
        raise UsageError(f"cannot take the run lock in {run_dir}: {err.strerror} (needs flock)") from None
    if run_lock is None:
        holder = rr.lock_holder(run_dir) or {}
        raise RunBusyError(f"{run_dir} is in use by another trainer (pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')}); nothing done")
    return run_lock


# ---------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    signals = StartupSignals()
    from twm.tracking import TrackingError, artifact_location, check_tracking_uri, default_tracking_uri

    # 1. every value, torch-free (fast); nothing is written before all checks pass
    game = check_game(args.game)
    seed = check_seed(args.seed)
    config = build_config(args.preset, args.set, args.device)
    tags = parse_tags(args.tag)
    run_dir = Path(args.out)
    uri = args.tracking_uri or default_tracking_uri(run_dir)
    if not args.offline and not (run_dir / rr.MLFLOW_RUN).exists():
        # A fresh run checks its server at once (a typo is bad input); a run started before never stops
        # for tracking: its sender retries in the background.
        try:
            check_tracking_uri(uri)
        except TrackingError as err:
            raise UsageError(str(err)) from None
    if (run_dir / rr.DONE).exists():
        print(f"already done: {run_dir / rr.DONE}")
        return EXIT_OK
    meta = {"game": game, "seed": seed, "preset": args.preset, "config_hash": config.hash()}
    saved = rr.read_json(run_dir / rr.CONFIG)
    if isinstance(saved, dict) and any(saved.get(k) != v for k, v in meta.items()):
        raise UsageError(f"{run_dir} holds a different run ({saved.get('game')} seed {saved.get('seed')}, "
                         f"config {saved.get('config_hash')}); use another --out")
    signals.check()

    # 2. what needs torch: the device, the models, and the checkpoint to resume from
    from twm.checkpoint import CheckpointError, StorageError
    from twm.tracking import Tracker
    from twm.train import NonFiniteLossError, StopRequested, Trainer

    signals.check()
    # A live trainer on this directory (it made the lock file): touch nothing, restoring may set files aside.
    # The lock is held by this process for the rest of its life; claim.json is written once every check passed.
    run_lock = take_run_lock(run_dir) if (run_dir / rr.LOCK).exists() else None
    try:
        trainer = Trainer(config, game, seed, run_dir, None, progress=not args.no_progress)
        signals.check()
        trainer.restore()
    except (ValueError, CheckpointError) as err:  # CUDA requested but absent; another run's checkpoint
        raise UsageError(str(err)) from None
    signals.check()

    # 3. the run's own files: only now is anything written (restoring may have set a corrupt checkpoint aside)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output folder {run_dir} is not writable: {err.strerror}") from None
    run_lock = run_lock or take_run_lock(run_dir)
    run_lock.announce()
    (run_dir / rr.FAILED).unlink(missing_ok=True)
    rr.write_json_atomic(run_dir / rr.CONFIG, meta | {"config": config.to_dict()})
    signals.check()

    trainer.tracker = Tracker(uri, experiment=args.experiment, run_name=args.run_name or f"{game}-s{seed}",
                              tags={rr.TAG_GAME: game, rr.TAG_SEED: str(seed), rr.TAG_PRESET: args.preset,
                                    rr.TAG_CONFIG_HASH: config.hash()} | tags,
                              offline=args.offline, location=artifact_location(uri, run_dir),
                              interval_s=config.runtime.tracking_interval_s, close_s=config.runtime.tracking_close_s)
    signals.hand_over(trainer)
    try:
        trainer.run()
    except StopRequested as err:
        print(f"twm-train: {err}; rerun the same command to resume", file=sys.stderr)
        return EXIT_STOPPED
    except NonFiniteLossError as err:
        print(f"twm-train: {err}; the last good checkpoint in {run_dir / rr.CHECKPOINTS} is kept", file=sys.stderr)
        return EXIT_FAILED
    except StorageError as err:
        print(f"twm-train: error: {err}", file=sys.stderr)
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
    """Evaluate a checkpoint with the run's own evaluation envs and seeds. The game, seed and configuration
    recorded in the run directory (and --game/--seed when given) must match the checkpoint's."""
    episodes = check_at_least_1("--episodes", args.episodes)
    envs = check_at_least_1("--envs", args.envs) if args.envs is not None else None
    seed = check_seed(args.seed) if args.seed is not None else None
    game = check_game(args.game) if args.game is not None else None
    device_name = check_device(args.device) if args.device is not None else None
    path = Path(args.checkpoint)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    run_dir = path.parent.parent if path.is_file() else path.parent if path.name == rr.CHECKPOINTS else path
    recorded = rr.read_json(run_dir / rr.CONFIG)
    recorded = recorded if isinstance(recorded, dict) else {}
    try:
        run_config = Config.from_dict(recorded["config"]) if "config" in recorded else None
    except ConfigError as err:
        raise UsageError(f"{run_dir / rr.CONFIG} holds a configuration this version rejects: {err}") from None

    import numpy as np
    import torch

    from twm.agent import Agent
    from twm.checkpoint import CheckpointError, check_identity, load_checkpoint, load_newest
    from twm.envs import evaluate, num_actions
    from twm.train import resolve_device

    try:
        if path.is_file():
            ckpt = load_checkpoint(path)
        else:
            found = load_newest(run_dir)
            if found is None:
                raise UsageError(f"no checkpoint in {run_dir}")
            path, ckpt, skipped = found
            for _, err in skipped:
                print(f"twm-train: warning: {err}; evaluating the previous good checkpoint {path.name}",
                      file=sys.stderr)
        check_identity(path, ckpt, game if game is not None else recorded.get("game"),
                       seed if seed is not None else recorded.get("seed"), run_config)
        device = resolve_device(device_name or "auto")
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None
    config = Config.from_json(ckpt["config"])
    game, seed = ckpt["game"], int(ckpt["seed"])
    torch.manual_seed(seed)
    agent = Agent(config, num_actions(game), device)
    agent.load_state_dict(ckpt["agent"])
    envs = min(envs or config.runtime.eval_envs, episodes)
    scores = evaluate(game, config.env, agent.make_policy(envs), episodes, envs, seed=seed, progress=True)
    print(json.dumps({"checkpoint": str(path), "game": game, "seed": seed, "envs": envs, "episodes": len(scores),
                      "mean": float(np.mean(scores)), "std": float(np.std(scores)), "scores": scores.tolist()},
                     indent=1))
    return EXIT_OK


# ---------------------------------------------------------------------------------------- main
class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error (`twm-train: error: ...`, exit 2) instead of the usage."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"twm-train: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="twm-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train (or resume) one run: one game, one seed")
    run.add_argument("--game", required=True, help=f"paper name, one of: {', '.join(GAMES)}")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--preset", default="paper", help="paper | smoke")
    run.add_argument("--out", required=True, help="run directory (rerun on it to resume)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. buffer.temperature=inf (repeatable)")
    run.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite file in --out)")
    run.add_argument("--offline", action="store_true",
                     help="keep the MLflow record in --out only (metrics.jsonl, mlflow_run.json); "
                          "`twm-suite sync` sends it to --tracking-uri later")
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
    ev.add_argument("--envs", type=int, default=None,
                    help="evaluation envs (default: the run's runtime.eval_envs, which fixes the reset seeds)")
    ev.add_argument("--game", default=None, help="the run's game: refuse a checkpoint of another one")
    ev.add_argument("--seed", type=int, default=None, help="the run's seed: refuse a checkpoint of another one")
    ev.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: auto)")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A crash in native code (a segfault in a library) leaves every thread's Python stack in the run's log
    faulthandler.enable()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError, UnknownGameError) as err:
        print(f"twm-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StartupStopped as err:
        print(f"twm-train: {err}", file=sys.stderr)
        return EXIT_STOPPED
    except RunBusyError as err:
        print(f"twm-train: error: {err}", file=sys.stderr)
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
