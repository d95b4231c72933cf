"""One TWM run on one game and seed (spec §1, §10): prefill, pretraining, main loop, evaluations.

The run is resumable: `train()` on a run directory holding a checkpoint continues from it exactly
(models, optimizers, buffer, visit counts, RNG states, emulator state, schedule position).
Checkpoints are taken only at safe points (between train steps, between pretraining epochs, and
right before every evaluation), so a resumed run takes the same path as an uninterrupted one.
A stop request (signal) is honoured at the next safe point: checkpoint, then `StopRequested`.

Every metric point goes to the run's local log first (twm.metric_log), at a cadence that does not depend
on time (losses: the mean of every `runtime.metrics_every` updates, step = the update number), so a
resumed run logs exactly the points of an uninterrupted one; the tracker's background sender feeds
MLflow from that log, and the training loop never waits on it.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twm import run_record as rr
from twm.agent import Agent
from twm.checkpoint import (
    CorruptCheckpointError,
    as_storage_error,
    check_identity,
    checkpoint_dir,
    ensure_space,
    env_state,
    load_newest,
    next_checkpoint_path,
    payload_nbytes,
    remove_stale_temp_files,
    restore_env_state,
    rng_state,
    save_checkpoint,
    set_aside,
    set_rng_state,
)
from twm.config import Config
from twm.envs import evaluate, make_env, num_actions
from twm.metric_log import MetricLog
from twm.replay import ReplayBuffer
from twm.schedule import Interleave, compute_budget
from twm.tracking import Tracker

STATUS_EVERY_S = 10.0  # status.json is refreshed at least this often while a run makes progress


class StopRequested(Exception):
    """A signal asked the run to stop; a checkpoint was written (or nothing was worth saving)."""


class NonFiniteLossError(RuntimeError):
    """A loss or metric became NaN/inf; the run stops and its last good checkpoint stays."""


@dataclass
class RunState:
    """Scalar progress of a run, saved in every checkpoint."""

    phase: str = "prefill"  # prefill | pretrain_obs | pretrain_dyn | pretrain_ac | main | final
    budget_left: float = 0.0  # samples left in the current pretraining phase
    updates: int = 0  # every optimisation call so far (pretraining included)
    train_steps: int = 0  # main-loop train steps
    interleave_counter: float = 0.0
    last_eval: int = 0  # env step of the last evaluation
    reset_seed: int = 0  # training env reset seed, s <- 3s + 13 at every episode end
    episode_return: float = 0.0  # raw return of the current training game
    evals: list[list[float]] = field(default_factory=list)  # [env_step, mean return]
    wall_s: float = 0.0  # wall-clock of earlier attempts
    attempt: int = 1


@dataclass
class RunSummary:
    game: str
    seed: int
    final_score: float
    episodes: list[float]
    env_steps: int
    train_steps: int
    wall_s: float
    run_dir: str
    evals: list[list[float]]  # [env step, mean return] of every evaluation, the final one last


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


class Trainer:
    """Owns the env, agent, buffer and schedule of one run; `run()` drives it to the end."""

    def __init__(self, config: Config, game: str, seed: int, run_dir: Path, tracker: Tracker | None = None,
                 *, progress: bool = True):
        self.config, self.game, self.seed = config, game, seed
        self.run_dir = Path(run_dir)
        self.tracker = tracker
        self.progress = progress
        self.stop_requested = False
        self.in_evaluation = False
        self.device = resolve_device(config.runtime.device)
        if config.runtime.threads > 0:
            torch.set_num_threads(config.runtime.threads)
        self.budget = compute_budget(config)

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.env = make_env(game, config.env)
        self.env.action_space.seed(seed)  # prefill actions (unseeded in the released code)
        self.agent = Agent(config, num_actions(game), self.device)
        obs_shape = (config.env.frame_stack, config.env.screen_size, config.env.screen_size)
        self.buffer = ReplayBuffer(config.buffer.capacity, obs_shape, self.device)
        self.policy = self.agent.make_policy(1)
        self.state = RunState(reset_seed=rr.train_reset_seed(seed))
        self.interleave = Interleave(self.budget.train_every)
        self._started = time.monotonic()
        self._last_checkpoint = time.monotonic()
        self._checkpointed: tuple | None = None  # (phase, env step, updates) of the newest checkpoint
        self._restored = False  # restore() ran (cmd_run calls it before creating anything)
        self._resumed = False  # restore() continued from a checkpoint
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0
        self.metric_log: MetricLog | None = None
        self._metric_log_size = 0  # the metric log's size at the newest checkpoint (a resume cuts it back to it)
        self._rate_from = (time.monotonic(), 0, 0)  # (time, env step, train steps) of the last loss flush
        self._status_lock = threading.Lock()  # the tracking sender rewrites status.json from its thread
        self._status_state = rr.STATE_RUNNING
        self._status_written = time.monotonic()
        self._bar: tqdm | None = None

    # ------------------------------------------------------------------------------ plumbing
    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self._bar is not None:
            self._bar.write(line)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def wall_s(self) -> float:
        return self.state.wall_s + time.monotonic() - self._started

    def write_status(self, state: str | None = None) -> None:
        """Rewrite status.json (`state` None: keep the last one, e.g. when the tracking state changed)."""
        with self._status_lock:
            self._status_state = state = state or self._status_state
            self._write_status(state)
            self._status_written = time.monotonic()

    def refresh_status(self) -> None:
        """Progress for `twm-suite status` and the launcher's bar between checkpoints: status.json every
        STATUS_EVERY_S. Never on the critical path: a failed write is a warning, the next one retries."""
        if time.monotonic() - self._status_written < STATUS_EVERY_S:
            return
        try:
            self.write_status()
        except OSError as err:
            self._status_written = time.monotonic()
            self.log(f"warning: could not refresh {rr.STATUS}: {err.strerror or err}")

    def _write_status(self, state: str) -> None:
        last = self.state.evals[-1] if self.state.evals else None
        rr.write_json_atomic(self.run_dir / rr.STATUS, {
            "state": state,
            "phase": self.state.phase,
            "env_step": self.buffer.size,
            "total_env_steps": self.config.buffer.capacity,
            "train_steps": self.state.train_steps,
            "last_eval_return": last[1] if last else None,
            "last_eval_step": int(last[0]) if last else None,
            "started": time.time() - (time.monotonic() - self._started),
            "updated": time.time(),
            "wall_s": self.wall_s(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
            "tracking": self.tracker.summary() if self.tracker else None,
            "attempt": self.state.attempt,
        })

    def record(self, metrics: dict[str, torch.Tensor], what: str) -> None:
        """Check an update's metrics for NaN/inf (one host sync) and accumulate them; every
        `runtime.metrics_every` updates their means are logged."""
        self.state.updates += 1
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).cpu().numpy()
        finite = np.isfinite(values)
        if not finite.all():
            bad = ", ".join(f"{names[i]}={values[i]}" for i in np.flatnonzero(~finite))
            raise NonFiniteLossError(f"non-finite loss in {what} at update {self.state.updates}: {bad}")
        for k, v in zip(names, values, strict=True):
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + float(v)
        self._metric_count += 1
        if self.state.updates % self.config.runtime.metrics_every == 0:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Log the means of the updates since the last flush (step = update number, unique per key), with
        the env step they reached and, in the main loop, the throughput; one progress line."""
        if not self._metric_count:
            return
        metrics = {k: v / self._metric_count for k, v in self._metric_sums.items()}
        metrics[rr.PROGRESS_ENV_STEP] = self.buffer.size
        now, (then, env_then, train_then) = time.monotonic(), self._rate_from
        rate = ""
        if self.state.phase == "main" and now > then:
            metrics[rr.PERF_ENV_STEPS_PER_S] = (self.buffer.size - env_then) / (now - then)
            metrics[rr.PERF_TRAIN_STEPS_PER_S] = (self.state.train_steps - train_then) / (now - then)
            rate = f", {metrics[rr.PERF_TRAIN_STEPS_PER_S]:.2f} train steps/s"
        self.log_points(metrics, step=self.state.updates)
        self._metric_sums, self._metric_count = {}, 0
        self._rate_from = (now, self.buffer.size, self.state.train_steps)
        self.log(f"update {self.state.updates} ({self.state.phase}): env step {self.buffer.size}, "
                 f"train step {self.state.train_steps}{rate}")

    def log_points(self, metrics: dict[str, float], step: int) -> None:
        """Append metric points to the run's local log (MLflow gets them from there)."""
        self.metric_log.append(metrics, step)

    # --------------------------------------------------------------------------- checkpoints
    def payload(self) -> dict:
        """Everything a checkpoint holds; it lists the buffer's frame files saved so far."""
        return {
            "game": self.game,
            "seed": self.seed,
            "config": self.config.to_json(),
            "state": json.dumps(asdict(self.state) | {"wall_s": self.wall_s()}),
            "agent": self.agent.state_dict(),
            "optimizers": self.agent.optimizer_state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": rng_state(),
            "env": env_state(self.env),
            # the metric log's durable size (a resume cuts it back to this) and the loss means in progress
            "metric_log": json.dumps({"size": self._metric_log_size, "sums": self._metric_sums,
                                      "count": self._metric_count}),
        }

    def checkpoint(self) -> None:
        """Append the replay frames since the last checkpoint, then write the checkpoint that lists them.
        Both must fit before either is written; a failed write leaves neither (StorageError)."""
        self.state.interleave_counter = self.interleave.counter
        self._metric_log_size = self.metric_log.sync()
        folder = checkpoint_dir(self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        listed = list(self.buffer.frames)
        new_frames = self.buffer.unsaved_frame_bytes()
        ensure_space(folder, new_frames + payload_nbytes(self.payload()),
                     f"checkpoint {next_checkpoint_path(self.run_dir).name} with "
                     f"{new_frames // self.buffer.frame_nbytes} new replay frames")
        try:
            self.buffer.save_frames(folder)
            path = save_checkpoint(self.run_dir, self.payload(), keep=self.config.runtime.keep_checkpoints)
        except BaseException:
            self.buffer.frames = listed
            raise
        finally:
            self.buffer.remove_unlisted_frames(folder)
        self._last_checkpoint = time.monotonic()
        self._checkpointed = self._position()
        self.write_status(rr.STATE_RUNNING)
        self.log(f"checkpoint {path.name} at env step {self.buffer.size} ({self.state.phase})")

    def restore(self) -> bool:
        """Continue from the newest good checkpoint, once. A corrupt newer one (its payload or its replay
        frames fail their checksums) is set aside with a warning naming both; a checkpoint of another game,
        seed or configuration is refused (IdentityError); temp files of killed writes are removed."""
        if self._restored:
            return self._resumed
        self._restored = True
        folder = checkpoint_dir(self.run_dir)
        started_before = self._attempts_started()

        def accept(path: Path, ckpt: dict) -> None:
            check_identity(path, ckpt, self.game, self.seed, self.config)
            try:
                self.buffer.load_state_dict(ckpt["buffer"], folder)
            except CorruptCheckpointError as err:
                raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {err}") from None

        found = load_newest(self.run_dir, accept)
        removed = remove_stale_temp_files(self.run_dir)
        if removed:
            self.log(f"removed {len(removed)} temp file(s) of interrupted writes: {', '.join(p.name for p in removed)}")
        if found is None:
            self.buffer.remove_unlisted_frames(folder)  # frames of a first checkpoint that was never written
            self.state.attempt = started_before + 1  # a start killed before its first checkpoint still counts
            return False
        path, ckpt, skipped = found
        for bad, err in skipped:
            aside = set_aside(bad)
            self.log(f"warning: {err}; resuming from the previous good checkpoint {path.name} "
                     f"(the bad one is kept as {aside.name})")
        self.buffer.remove_unlisted_frames(folder)
        self.agent.load_state_dict(ckpt["agent"])
        self.agent.load_optimizer_state_dict(ckpt["optimizers"])
        self.state = RunState(**json.loads(ckpt["state"]))
        # a start stopped before it made progress wrote no checkpoint of its own; status.json still counts it
        self.state.attempt = max(self.state.attempt, started_before) + 1
        self.interleave.counter = self.state.interleave_counter
        restore_env_state(self.env, ckpt["env"])
        set_rng_state(ckpt["rng"])
        metric_log = json.loads(ckpt.get("metric_log", "{}"))
        self._metric_log_size = metric_log.get("size", 0)
        self._metric_sums, self._metric_count = metric_log.get("sums", {}), metric_log.get("count", 0)
        self._checkpointed = self._position()
        self.log(f"resumed from checkpoint {path.name} at env step {self.buffer.size} "
                 f"({self.state.phase}, attempt {self.state.attempt})")
        self._resumed = True
        return True

    def _attempts_started(self) -> int:
        """The attempt number status.json last recorded (0: none, or unreadable). Every start that began to
        run wrote it, so it also counts the starts whose stop came before any checkpoint of their own."""
        status = rr.read_json(self.run_dir / rr.STATUS)
        attempt = status.get("attempt") if isinstance(status, dict) else None
        return attempt if isinstance(attempt, int) and attempt > 0 else 0

    def _position(self) -> tuple:
        return self.state.phase, self.buffer.size, self.state.updates

    def safe_point(self, *, force: bool = False) -> None:
        """Where a checkpoint is consistent: take one when due (not twice for the same position),
        and honour a stop request."""
        interval = self.config.runtime.checkpoint_interval_s
        due = force or self.stop_requested or time.monotonic() - self._last_checkpoint >= interval
        if due and self._checkpointed != self._position():
            self.checkpoint()
        else:
            self.refresh_status()
        if self.stop_requested:
            raise StopRequested(f"stopped at env step {self.buffer.size} after a checkpoint")

    def request_stop(self) -> None:
        """Called from a signal handler. During an evaluation, stop at once: the checkpoint
        written just before it makes the resumed run redo that evaluation identically."""
        self.stop_requested = True
        if self.in_evaluation:
            raise StopRequested("stopped during an evaluation; it is redone on resume")

    # ------------------------------------------------------------------------------ the run
    def run(self) -> RunSummary:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.restore()
        self.metric_log = MetricLog(self.run_dir / rr.METRICS)
        self.metric_log.truncate(self._metric_log_size)  # points after the checkpoint are redone
        self.write_status(rr.STATE_RUNNING)
        if self.tracker:
            params = self.config.to_dict() | {"game": self.game, "seed": self.seed}
            self.tracker.start(self.run_dir, params, log=self.log, on_change=self.write_status)
        self._bar = tqdm(total=self.config.buffer.capacity, initial=self.buffer.size, unit="step",
                         desc=f"{self.game} s{self.seed}", disable=not self.progress, dynamic_ncols=True)
        try:
            return self._run_phases()
        except StopRequested:
            self.write_status(rr.STATE_INTERRUPTED)
            raise
        except Exception as err:
            failure = as_storage_error(err)  # a full disk met by any write, told as one line
            self.record_failure(failure or err)
            if failure is not None and failure is not err:
                raise failure from None
            raise
        finally:
            self._bar.close()
            self._bar = None
            self.close_tracking()
            self.metric_log.close()

    def close_tracking(self) -> None:
        """Give the sender its bounded time to send the last points, then record how that went."""
        if self.tracker:
            if not self.tracker.close():
                self.log(f"tracking: not everything reached {self.tracker.uri} in time; `twm-suite sync` "
                         "or the next start sends the rest from metrics.jsonl")
            try:
                self.write_status()
            except OSError as err:  # e.g. a full disk: the run's own outcome is already recorded
                self.log(f"could not write {rr.STATUS}: {err.strerror}")

    def record_failure(self, err: BaseException) -> None:
        """Say why the run failed in FAILED, status.json and the MLflow run, each on its own: on a full disk
        the reason must still reach FAILED (written in place when an atomic write finds no room)."""
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}\n"
        failed = self.run_dir / rr.FAILED
        try:
            rr.write_text_atomic(failed, reason)
        except OSError:
            try:
                failed.write_text(reason)
            except OSError as write_err:
                self.log(f"could not write {failed}: {write_err.strerror}")
        try:
            self.write_status(rr.STATE_FAILED)  # the tracking sender tells MLflow
        except OSError as status_err:
            self.log(f"could not write {rr.STATUS}: {status_err.strerror}")

    def _run_phases(self) -> RunSummary:
        if self.state.phase == "prefill":
            self.prefill()
        if self.state.phase == "pretrain_obs":
            self.pretrain_obs()
        if self.state.phase == "pretrain_dyn":
            self.pretrain_dyn()
        if self.state.phase == "pretrain_ac":
            self.pretrain_ac()
        if self.state.phase == "main":
            self.main_loop()
        return self.final_evaluation()

    def env_step(self, action: int) -> None:
        """One real interaction (spec §2.2); episode ends reset with seed s <- 3s + 13."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.state.episode_return += float(reward)
        stored = math.tanh(reward) if self.config.env.reward_transform == "tanh" else float(reward)
        done = terminated or truncated
        self.policy.observe(np.array([stored], dtype=np.float32), np.array([done]))
        if done:
            game_over = truncated or info.get("lives", 0) == 0
            if game_over:
                self.log_points({rr.TRAIN_RETURN: self.state.episode_return}, step=self.buffer.size + 1)
                self.state.episode_return = 0.0
                self.policy.reset(0)
            self.state.reset_seed = rr.next_reset_seed(self.state.reset_seed)
            obs, _ = self.env.reset(seed=self.state.reset_seed)
        self.buffer.append(action, stored, terminated, truncated, obs)
        self._bar.update(1)

    def prefill(self) -> None:
        """Uniformly random actions; these interactions count toward the total (spec §1.2)."""
        obs, _ = self.env.reset(seed=self.state.reset_seed)
        self.buffer.set_current_obs(obs)
        self.policy.reset(0)
        self._bar.set_postfix_str("prefill")
        for _ in range(self.config.buffer.prefill):
            if self.stop_requested:
                raise StopRequested("stopped during prefill (nothing worth a checkpoint yet)")
            self.env_step(int(self.env.action_space.sample()))
        self.state.phase, self.state.budget_left = "pretrain_obs", self.budget.obs_pretrain
        self.safe_point(force=True)

    def _pretrain(self, phase: str, desc: str, epoch, step) -> None:
        """Run epochs of `step(batch) -> samples` until this phase's budget is spent."""
        total = {"pretrain_obs": self.budget.obs_pretrain, "pretrain_dyn": self.budget.dyn_pretrain,
                 "pretrain_ac": self.budget.ac_pretrain}[phase]
        with tqdm(total=int(total), initial=int(total - self.state.budget_left), unit="sample", desc=desc,
                  disable=not self.progress, leave=False, dynamic_ncols=True) as bar:
            while self.state.budget_left > 0:
                for batch in epoch():
                    used = step(batch)
                    self.state.budget_left -= used
                    bar.update(used)
                    if self.state.budget_left <= 0:
                        break
                self.safe_point()
        self.flush_metrics()

    def pretrain_obs(self) -> None:
        """Observation model on single frame stacks, chunks of N*l (spec §10.2.1)."""
        chunk = self.config.wm.batch_size * self.config.wm.sequence_length

        def step(index: torch.Tensor) -> int:
            self.record(self.agent.pretrain_obs_step(self.buffer.obs[index.to(self.device)]), "pretrain_obs")
            return len(index)

        self._pretrain("pretrain_obs", "pretrain φ", lambda: torch.randperm(self.buffer.size).split(chunk), step)
        self.state.phase, self.state.budget_left = "pretrain_dyn", self.budget.dyn_pretrain
        self.safe_point(force=True)

    def cached_logits(self) -> torch.Tensor:
        return self.agent.encode_logits(self.buffer.obs[: self.buffer.size + 1])

    def pretrain_dyn(self) -> None:
        """Dynamics model on cached encoder logits, uniform non-overlapping sequences (§10.2.3)."""
        logits, wm = self.cached_logits(), self.config.wm

        def step(starts: torch.Tensor) -> int:
            batch = self.buffer.gather(starts, wm.sequence_length, logits=logits)
            self.record(self.agent.pretrain_dyn_step(batch), "pretrain_dyn")
            return len(starts) * wm.sequence_length

        self._pretrain("pretrain_dyn", "pretrain ψ",
                       lambda: self.buffer.uniform_epoch(wm.sequence_length, wm.batch_size), step)
        self.state.phase, self.state.budget_left = "pretrain_ac", self.budget.ac_pretrain
        self.safe_point(force=True)

    def pretrain_ac(self) -> None:
        """Actor-critic on real latent sequences: critic regression, pure entropy actor (§10.2.4)."""
        logits, ac = self.cached_logits(), self.config.ac

        def step(starts: torch.Tensor) -> int:
            batch = self.buffer.gather(starts, ac.horizon, logits=logits)
            self.record(self.agent.pretrain_ac_step(batch), "pretrain_ac")
            return len(starts) * ac.horizon

        self._pretrain("pretrain_ac", "pretrain actor-critic",
                       lambda: self.buffer.uniform_epoch(ac.horizon, ac.batch_size), step)
        self.state.phase = "main"
        self.safe_point(force=True)

    def main_loop(self) -> None:
        """Alternate one env step with 1/train_every train steps on average (spec §10.3)."""
        cfg = self.config
        self._bar.set_postfix_str("main")
        self._rate_from = (time.monotonic(), self.buffer.size, self.state.train_steps)
        while self.buffer.size < cfg.buffer.capacity:
            if self.buffer.size - self.state.last_eval >= cfg.schedule.eval_every:
                self.evaluation(cfg.schedule.eval_episodes)
            # the frame stack stays on the buffer's device; int() is the one sync (the env needs the action)
            action = int(self.policy.act(self.buffer.obs[self.buffer.size][None])[0])
            self.env_step(action)
            for _ in range(self.interleave.after_env_step()):
                self.train_step()
            self.safe_point()
        self.flush_metrics()
        self.state.phase = "final"

    def train_step(self) -> None:
        """One world-model update, imagination and actor-critic update on a balanced batch."""
        wm = self.config.wm
        starts = self.buffer.sample_starts(wm.batch_size, wm.sequence_length, self.config.buffer.temperature)
        batch = self.buffer.gather(starts, wm.sequence_length)
        self.record(self.agent.train_step(batch, self.buffer.sample_obs), "train_step")
        self.state.train_steps += 1

    def evaluation(self, episodes: int) -> np.ndarray:
        """Whole-game evaluation with parallel envs (spec §2.3); checkpointed just before."""
        self.safe_point(force=True)
        num_envs = min(self.config.runtime.eval_envs, episodes)  # fixed by the config: it decides the seeds
        self._bar.set_postfix_str(f"evaluating {episodes} episodes")
        started = time.monotonic()
        self.in_evaluation = True
        try:
            scores = evaluate(self.game, self.config.env, self.agent.make_policy(num_envs), episodes, num_envs,
                              seed=self.seed)
        finally:
            self.in_evaluation = False
        step = self.buffer.size
        self.state.last_eval = step
        self.state.evals.append([step, float(scores.mean())])
        self.log(f"eval at {step}: return {scores.mean():.1f} ± {scores.std():.1f} over {episodes} games "
                 f"({time.monotonic() - started:.0f}s)")
        self.log_points({rr.EVAL_RETURN: float(scores.mean()), rr.EVAL_RETURN_STD: float(scores.std()),
                         rr.EVAL_EPISODES: episodes}, step=step)
        self._bar.set_postfix_str(f"main, last eval {scores.mean():.1f}")
        self.write_status(rr.STATE_RUNNING)
        return scores

    def final_evaluation(self) -> RunSummary:
        scores = self.evaluation(self.config.schedule.final_eval_episodes)
        summary = RunSummary(self.game, self.seed, float(scores.mean()), scores.tolist(), self.buffer.size,
                             self.state.train_steps, self.wall_s(), str(self.run_dir), self.state.evals)
        self.log_points({rr.FINAL_SCORE: summary.final_score, rr.FINAL_SCORE_STD: float(scores.std())},
                        step=self.buffer.size)
        self.metric_log.sync()
        rr.write_json_atomic(self.run_dir / rr.FINAL_SCORES, asdict(summary))
        self.write_status(rr.STATE_DONE)
        rr.write_json_atomic(self.run_dir / rr.DONE, {
            "final_score": summary.final_score, "episodes": len(scores), "env_steps": summary.env_steps,
            "wall_s": summary.wall_s, "config_hash": self.config.hash()})
        self.log(f"done: final score {summary.final_score:.2f} over {len(scores)} games; outputs in {self.run_dir}")
        return summary


def train(config: Config, game: str, seed: int, run_dir: Path, tracker: Tracker | None = None,
          *, progress: bool = True) -> RunSummary:
    """Run (or resume) one TWM run to the end. See `Trainer`."""
    return Trainer(config, game, seed, run_dir, tracker, progress=progress).run()
