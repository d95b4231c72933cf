"""One typed configuration for a TWM run: every value of the paper's Table 4 and of spec §15.10.

Where the paper and the released code differ, the code's behaviour is the default and the paper's
form is a switch (spec §15). Presets: `paper()` (the published runs) and `smoke()` (a tiny model and
budget that runs a whole run on a 2-core CPU in minutes). Overrides use dotted keys
(`"buffer.temperature": "inf"`) and reject unknown keys, wrong types and values out of range, so a bad
value fails at parse time, before any work. Torch-free on purpose.

A run's identity is its config hash: every setting that changes what a run computes, `runtime.precision`
and `runtime.eval_envs` included; only the execution settings (`EXECUTION_KEYS`: device, threads,
checkpointing, compile, static imagination shapes, CUDA graphs: they change speed, placement and float
rounding, never the maths or the number format; the metric-logging cadence and tracking) are left out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad override or an inconsistent configuration (one-line message)."""


@dataclass(frozen=True)
class EnvConfig:
    """Atari protocol (spec §2)."""

    frame_skip: int = 4
    screen_size: int = 64
    frame_stack: int = 4
    noop_max: int = 30  # training resets of non-FIRE games; never at evaluation
    sticky_action_prob: float = 0.0
    episodic_lives: bool = True  # life loss ends a learning episode (no game reset)
    time_limit: int = 27_000  # agent steps (108K frames)
    reward_transform: Literal["tanh", "none"] = "tanh"  # for learning; scores use raw rewards


@dataclass(frozen=True)
class ObservationConfig:
    """Observation model phi (spec §3)."""

    channels: int = 48
    num_categoricals: int = 32
    num_classes: int = 32
    encoder_hidden: tuple[int, ...] = (512, 512)
    decoder_hidden: int = 768
    decoder_coef: float = 1.0
    # Code: 5 * relu(0.1 - H/(32 ln 32)) (a hinge). With entropy_threshold >= 1 the code uses
    # -coef * H_norm, which is the paper's Eq. 3 form.
    entropy_coef: float = 5.0
    entropy_threshold: float = 0.1
    consistency_coef: float = 0.01
    # "code": -sum sg(p_hat) log q (released code); "paper": -sum q log sg(p_hat) (Eq. 3/10).
    consistency_direction: Literal["code", "paper"] = "code"
    lr: float = 1e-4
    eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 100.0


@dataclass(frozen=True)
class DynamicsConfig:
    """Transformer-XL dynamics model psi and its heads (spec §4)."""

    embed_dim: int = 256
    num_layers: int = 10
    num_heads: int = 4
    feedforward_dim: int = 1024
    dropout: float = 0.1
    memory_length: int = 16  # steps; memory holds memory_length*3 + 2 tokens
    input_rewards: bool = True  # ablation "no reward input": False
    input_discounts: bool = False
    latent_head_hidden: tuple[int, ...] = (512, 512, 512, 512)
    reward_head_hidden: tuple[int, ...] = (256, 256, 256, 256)
    discount_head_hidden: tuple[int, ...] = (256, 256, 256, 256)
    latent_coef: float = 1.0
    reward_coef: float = 10.0
    discount_coef: float = 50.0
    discount_threshold: float = 0.1  # imagined episode ends when cumulative gamma_hat < this
    # "xl": cached Transformer-XL memory in imagination; "vanilla": recompute the whole history
    # at every imagination step (the paper's runtime comparison).
    imagination_memory: Literal["xl", "vanilla"] = "xl"
    lr: float = 1e-4
    eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 100.0


@dataclass(frozen=True)
class WorldModelConfig:
    """World-model training batches (spec §5)."""

    batch_size: int = 100  # N sequences
    sequence_length: int = 16  # history length l
    train_steps: int = 1  # WM updates per train step


@dataclass(frozen=True)
class ActorCriticConfig:
    """Imagination and actor-critic (spec §7-§8)."""

    actor_hidden: tuple[int, ...] = (512, 512, 512, 512)
    critic_hidden: tuple[int, ...] = (512, 512, 512, 512)
    input_h: bool = False  # ablation "policy input [z, h]": True
    horizon: int = 15  # H
    batch_size: int = 400  # M imagination starts out of N*l candidates
    gamma: float = 0.99
    gae_lambda: float = 0.95
    # Thresholded entropy: coef * relu(threshold - H/ln A). Ablation "Gamma = 1": threshold 1.0,
    # coef 0.001 (paper values), a standard entropy bonus.
    entropy_coef: float = 0.01
    entropy_threshold: float = 0.1
    normalize_advantages: bool = False
    actor_lr: float = 1e-4
    critic_lr: float = 1e-5
    eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 1.0


@dataclass(frozen=True)
class BufferConfig:
    """Replay buffer and balanced sampling (spec §9)."""

    capacity: int = 100_000  # = number of interactions; ablation "fewer interactions": 10K/25K/50K
    prefill: int = 5_000  # uniformly random actions
    temperature: float = 20.0  # tau of softmax(-v/tau); math.inf = exactly uniform


@dataclass(frozen=True)
class ScheduleConfig:
    """Update budget and evaluation schedule (spec §10)."""

    budget: int = 1_000_000_000  # time-step samples consumed by updates, whole run
    pretrain_budget: int = 50_000_000
    pretrain_obs_fraction: float = 0.6
    pretrain_dyn_fraction: float = 0.3
    # "code": 5e7 * (1 - 0.6 + 0.3) = 3.5e7 (the released code's precedence bug);
    # "intended": 5e7 * (1 - 0.6 - 0.3) = 5e6.
    ac_pretrain_budget: Literal["code", "intended"] = "code"
    eval_every: int = 5_000  # env steps
    eval_episodes: int = 10
    final_eval_episodes: int = 100


@dataclass(frozen=True)
class RuntimeConfig:
    """How a run executes. `precision` and `eval_envs` change results and are part of the identity;
    the rest (`EXECUTION_KEYS`) only change speed and placement."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Evaluation envs stepped in lock-step (spec §2.3). A fixed number, never the machine's CPU count: it
    # decides which reset seeds are played (sub-env k gets s+k, s <- 3s + 13 + num_envs), hence the scores.
    eval_envs: int = 10
    threads: int = 0  # torch CPU threads; 0 = torch default
    checkpoint_interval_s: float = 600.0  # also after every evaluation
    keep_checkpoints: int = 2  # >= 2 keeps a previous good checkpoint to fall back to
    metrics_every: int = 100  # updates per logged mean of the losses (a cadence in updates, not seconds)
    tracking_interval_s: float = 5.0  # the background tracking sender's pass interval (twm.tracking)
    tracking_close_s: float = 10.0  # at the end, how long the sender may still take to send the last points
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"
    compile: bool = False
    # Imagination attends over its whole preallocated K/V buffer with a mask: identical shapes at every step.
    # The same maths in another float summation order (like threads or compile): an execution setting.
    static_imagination: bool = False
    # CUDA graphs for the world-model update, restart encode, imagination and actor-critic update (static
    # buffers, capturable fused Adam). A replay runs eager's kernels on eager's RNG stream (graph-safe Philox
    # offsets), so this changes speed only (an execution setting, like compile). On a CPU the same
    # static-buffer path runs without capture: what the CPU parity tests check.
    cuda_graphs: bool = False


# Settings that change how fast and where a run executes, not what it computes: left out of the hash. They may
# change float rounding (kernels, thread counts, summation order), never the maths or the number format; a
# setting that does (precision, evaluation envs) is part of the identity.
EXECUTION_KEYS = frozenset({"runtime.device", "runtime.threads", "runtime.checkpoint_interval_s",
                            "runtime.keep_checkpoints", "runtime.compile", "runtime.static_imagination",
                            "runtime.cuda_graphs", "runtime.metrics_every", "runtime.tracking_interval_s",
                            "runtime.tracking_close_s"})
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


# ------------------------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """The allowed values of a number, or of every item of a tuple: NaN never, infinity only if `allow_inf`."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    allow_inf: bool = False

    def __contains__(self, value: float) -> bool:
        if math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:g}"
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, key: str, value: Any) -> None:
        """ConfigError naming the key when `value` (or an item of a tuple) is outside the range."""
        for item in value if isinstance(value, tuple) else (value,):
            if item not in self:
                finite = "finite and " if not self.allow_inf and math.isinf(item) else ""
                whose = f"every item of {key}" if isinstance(value, tuple) else key
                raise ConfigError(f"{whose} must be {finite}{self}, got {_show(value)}")


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
UNIT = Range(0, 1)
CLIP = Range(0, low_open=True, allow_inf=True)  # a gradient-norm clip; inf = no clipping

# Every numeric setting's range (tuples: each item); tests/test_config.py checks that none is missing.
RANGES: dict[str, Range] = {
    "env.frame_skip": AT_LEAST_1, "env.screen_size": Range(64, 64), "env.frame_stack": AT_LEAST_1,
    "env.noop_max": NON_NEGATIVE, "env.sticky_action_prob": UNIT, "env.time_limit": AT_LEAST_1,
    "obs.channels": AT_LEAST_1, "obs.num_categoricals": AT_LEAST_1, "obs.num_classes": Range(2),
    "obs.encoder_hidden": AT_LEAST_1, "obs.decoder_hidden": AT_LEAST_1, "obs.decoder_coef": NON_NEGATIVE,
    "obs.entropy_coef": NON_NEGATIVE, "obs.entropy_threshold": NON_NEGATIVE,
    "obs.consistency_coef": NON_NEGATIVE, "obs.lr": POSITIVE, "obs.eps": POSITIVE,
    "obs.weight_decay": NON_NEGATIVE, "obs.grad_clip": CLIP,
    "dyn.embed_dim": AT_LEAST_1, "dyn.num_layers": AT_LEAST_1, "dyn.num_heads": AT_LEAST_1,
    "dyn.feedforward_dim": AT_LEAST_1, "dyn.dropout": Range(0, 1, high_open=True), "dyn.memory_length": AT_LEAST_1,
    "dyn.latent_head_hidden": AT_LEAST_1, "dyn.reward_head_hidden": AT_LEAST_1,
    "dyn.discount_head_hidden": AT_LEAST_1, "dyn.latent_coef": NON_NEGATIVE, "dyn.reward_coef": NON_NEGATIVE,
    "dyn.discount_coef": NON_NEGATIVE, "dyn.discount_threshold": UNIT, "dyn.lr": POSITIVE, "dyn.eps": POSITIVE,
    "dyn.weight_decay": NON_NEGATIVE, "dyn.grad_clip": CLIP,
    "wm.batch_size": AT_LEAST_1, "wm.sequence_length": AT_LEAST_1, "wm.train_steps": AT_LEAST_1,
    "ac.actor_hidden": AT_LEAST_1, "ac.critic_hidden": AT_LEAST_1, "ac.horizon": AT_LEAST_1,
    "ac.batch_size": AT_LEAST_1, "ac.gamma": UNIT, "ac.gae_lambda": UNIT, "ac.entropy_coef": NON_NEGATIVE,
    "ac.entropy_threshold": NON_NEGATIVE, "ac.actor_lr": POSITIVE, "ac.critic_lr": POSITIVE, "ac.eps": POSITIVE,
    "ac.weight_decay": NON_NEGATIVE, "ac.grad_clip": CLIP,
    "buffer.capacity": AT_LEAST_1, "buffer.prefill": AT_LEAST_1,
    "buffer.temperature": Range(0, low_open=True, allow_inf=True),  # inf = exactly uniform
    "schedule.budget": AT_LEAST_1, "schedule.pretrain_budget": NON_NEGATIVE,
    "schedule.pretrain_obs_fraction": UNIT, "schedule.pretrain_dyn_fraction": UNIT,
    "schedule.eval_every": AT_LEAST_1, "schedule.eval_episodes": AT_LEAST_1,
    "schedule.final_eval_episodes": AT_LEAST_1,
    "runtime.eval_envs": AT_LEAST_1, "runtime.threads": NON_NEGATIVE,
    "runtime.checkpoint_interval_s": Range(0, low_open=True, allow_inf=True),  # inf = only at forced points
    "runtime.keep_checkpoints": AT_LEAST_1, "runtime.metrics_every": AT_LEAST_1,
    "runtime.tracking_interval_s": POSITIVE, "runtime.tracking_close_s": NON_NEGATIVE,
}


@dataclass(frozen=True)
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    obs: ObservationConfig = field(default_factory=ObservationConfig)
    dyn: DynamicsConfig = field(default_factory=DynamicsConfig)
    wm: WorldModelConfig = field(default_factory=WorldModelConfig)
    ac: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Flat {dotted.key: value}; floats like inf stay floats (JSON writes them as Infinity)."""
        return {
            f"{section.name}.{f.name}": getattr(getattr(self, section.name), f.name)
            for section in fields(self)
            for f in fields(getattr(self, section.name))
        }

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> Config:
        """Inverse of to_dict (values may be JSON-decoded: lists become tuples)."""
        return cls().with_overrides(flat)

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """Apply {dotted.key: value} overrides; strings are parsed to the field's type."""
        sections = {s.name: getattr(self, s.name) for s in fields(self)}
        for key, raw in overrides.items():
            section_name, _, name = key.partition(".")
            if section_name not in sections or not name:
                raise ConfigError(f"unknown config key {key!r}; sections are {', '.join(sections)}")
            section = sections[section_name]
            hints = typing.get_type_hints(type(section))
            if name not in hints:
                valid = ", ".join(f"{section_name}.{f.name}" for f in fields(section))
                raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
            sections[section_name] = replace(section, **{name: _coerce(key, raw, hints[name])})
        cfg = replace(self, **sections)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Reject values out of range and combinations the algorithm cannot run (one-line ConfigError)."""
        for key, value in self.to_dict().items():
            if key in RANGES:
                RANGES[key].check(key, value)
        runtime = self.runtime
        check_device(runtime.device)
        if runtime.compile and runtime.device == "cpu":
            raise ConfigError("runtime.compile=True needs a CUDA device, got runtime.device='cpu'")
        if self.dyn.input_discounts:
            raise ConfigError("dyn.input_discounts=True is not supported (the released runs use False)")
        wm, ac, buf, dyn = self.wm, self.ac, self.buffer, self.dyn
        if dyn.memory_length > wm.sequence_length:
            raise ConfigError(
                f"dyn.memory_length ({dyn.memory_length}) must be <= wm.sequence_length "
                f"({wm.sequence_length}); the l=4 ablation sets both to 4 (spec §13)"
            )
        if ac.batch_size > wm.batch_size * wm.sequence_length:
            raise ConfigError(
                f"ac.batch_size ({ac.batch_size}) must be <= wm.batch_size*wm.sequence_length "
                f"({wm.batch_size * wm.sequence_length}) imagination start candidates"
            )
        if buf.prefill >= buf.capacity:
            raise ConfigError(f"buffer.prefill ({buf.prefill}) must be < buffer.capacity ({buf.capacity})")
        if wm.batch_size * wm.sequence_length > buf.prefill - wm.sequence_length + 1:
            raise ConfigError(
                f"buffer.prefill ({buf.prefill}) is too small for {wm.batch_size} distinct sequences "
                f"of length {wm.sequence_length} (spec §9)"
            )
        if not buf.temperature > 0:
            raise ConfigError(f"buffer.temperature must be > 0 (inf for uniform), got {buf.temperature}")
        if dyn.embed_dim % dyn.num_heads:
            raise ConfigError(f"dyn.embed_dim ({dyn.embed_dim}) must be divisible by dyn.num_heads")
        if ac.horizon > buf.prefill - 1:
            raise ConfigError(f"ac.horizon ({ac.horizon}) must be < buffer.prefill ({buf.prefill})")
        schedule = self.schedule
        if schedule.pretrain_budget >= schedule.budget:
            raise ConfigError("schedule.pretrain_budget must be < schedule.budget")
        if schedule.pretrain_obs_fraction + schedule.pretrain_dyn_fraction > 1:
            raise ConfigError("schedule.pretrain_obs_fraction + schedule.pretrain_dyn_fraction must be <= 1")
        if self.runtime.static_imagination and dyn.imagination_memory != "xl":
            raise ConfigError("runtime.static_imagination=True needs dyn.imagination_memory=xl (the K/V cache)")
        if self.runtime.cuda_graphs and not self.runtime.static_imagination:
            raise ConfigError("runtime.cuda_graphs=True needs runtime.static_imagination=True (static shapes)")

    def identity(self) -> dict[str, Any]:
        """Every setting that changes what a run computes: all but the execution settings."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_KEYS}

    def hash(self) -> str:
        """Stable 10-hex-digit digest of `identity()`: names run directories, refuses foreign checkpoints."""
        text = json.dumps(self.identity(), sort_keys=True, default=_json_default)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def differences(self, other: Config) -> list[tuple[str, str, str]]:
        """The identity settings where `other` differs: (key, our value, its value), values as text."""
        ours, theirs = self.identity(), other.identity()
        return [(k, _show(ours[k]), _show(theirs[k])) for k in ours if ours[k] != theirs[k]]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


def check_device(name: str) -> str:
    """A device name as `runtime.device` takes it (auto | cpu | cuda | cuda:N), else a ConfigError."""
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Turn an override value (string from the CLI, or a JSON value) into the field's type."""
    origin = typing.get_origin(hint)
    try:
        if origin is Literal:
            choices = typing.get_args(hint)
            if raw not in choices:
                raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {raw!r}")
            return raw
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int):
                return raw
            value = float(raw)  # accepts "1e9"
            if not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)  # accepts "inf"
        if hint is str:
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if origin is tuple:
            items = raw
            if isinstance(raw, str):
                items = [s for s in raw.strip("[]() ").split(",") if s.strip()]
            return tuple(_coerce(key, item, typing.get_args(hint)[0]) for item in items)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"{key}: unsupported type {hint}")
    raise ConfigError(f"{key} expects {_type_name(hint)}, got {raw!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a comma-separated list of {typing.get_args(hint)[0].__name__}"
    if isinstance(hint, types.GenericAlias):
        return str(hint)
    return getattr(hint, "__name__", str(hint))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Parse CLI `key=value` strings; a malformed item is a ConfigError."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {item!r}: expected key=value, e.g. buffer.temperature=inf")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------- presets
def paper() -> Config:
    """The published configuration (paper Table 4 + the released code's settings)."""
    return Config()


def smoke() -> Config:
    """A tiny model and budget: a whole run (prefill, pretraining, main loop, evaluations) in
    about two minutes on a 2-core CPU. For tests and for trying the tools, not for scores."""
    base = Config()
    return replace(
        base,
        env=replace(base.env, time_limit=2_000),
        obs=replace(base.obs, channels=8, num_categoricals=8, num_classes=8, encoder_hidden=(64,),
                    decoder_hidden=64),
        dyn=replace(base.dyn, embed_dim=32, num_layers=2, num_heads=2, feedforward_dim=64,
                    memory_length=4, latent_head_hidden=(64,), reward_head_hidden=(32,),
                    discount_head_hidden=(32,)),
        wm=replace(base.wm, batch_size=8, sequence_length=4),
        ac=replace(base.ac, actor_hidden=(64,), critic_hidden=(64,), horizon=5, batch_size=16),
        buffer=replace(base.buffer, capacity=1_500, prefill=500),
        # pretraining: 300 phi, 150 psi, 140 actor-critic updates; main loop: 607 train steps
        schedule=replace(base.schedule, budget=84_000, pretrain_budget=16_000, eval_every=500,
                         eval_episodes=2, final_eval_episodes=4),
        # one thread: tiny models gain nothing from more, and parallel runs must not oversubscribe
        runtime=replace(base.runtime, threads=1, eval_envs=2),
    )


PRESETS = {"paper": paper, "smoke": smoke}


def preset(name: str) -> Config:
    """A preset by name; the error lists the valid names."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets are: {', '.join(PRESETS)}") from None


__all__ = [
    "PRESETS",
    "ActorCriticConfig",
    "BufferConfig",
    "Config",
    "ConfigError",
    "DynamicsConfig",
    "EXECUTION_KEYS",
    "EnvConfig",
    "ObservationConfig",
    "RANGES",
    "Range",
    "RuntimeConfig",
    "ScheduleConfig",
    "WorldModelConfig",
    "check_device",
    "paper",
    "parse_overrides",
    "preset",
    "smoke",
]
