"""One typed configuration for a TWM run: every value of the paper's Table 4 and of spec §15.10.

Where the paper and the released code differ, the code's behaviour is the default and the paper's
form is a switch (spec §15). Presets: `paper()` (the published runs) and `smoke()` (a tiny model and
budget that runs a whole run on a 2-core CPU in minutes). Overrides use dotted keys
(`"buffer.temperature": "inf"`) and reject unknown keys and wrong types. Torch-free on purpose.
"""

from __future__ import annotations

import hashlib
import json
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
    """How a run executes; not part of the run's identity (excluded from the config hash)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_envs: int = 0  # parallel evaluation envs; 0 = min(episodes, cpu count)
    threads: int = 0  # torch CPU threads; 0 = torch default
    checkpoint_interval_s: float = 600.0  # also after every evaluation
    keep_checkpoints: int = 2
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"
    compile: bool = False
    # Imagination attends over its whole preallocated K/V buffer with a mask: identical shapes at every step.
    # Same maths, another float summation order: imagined samples can differ near ties, so it changes results
    # (so it belongs in the run identity).
    static_imagination: bool = False
    # CUDA graphs for the world-model update, restart encode, imagination and actor-critic update (static
    # buffers, capturable fused Adam). A replay runs eager's kernels on eager's RNG stream (graph-safe Philox
    # offsets), so this changes speed only (an execution setting, like compile). On a CPU the same
    # static-buffer path runs without capture: what the CPU parity tests check.
    cuda_graphs: bool = False


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
        """Reject combinations the algorithm cannot run (one-line ConfigError)."""
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
        if self.schedule.pretrain_budget >= self.schedule.budget:
            raise ConfigError("schedule.pretrain_budget must be < schedule.budget")
        if self.runtime.static_imagination and dyn.imagination_memory != "xl":
            raise ConfigError("runtime.static_imagination=True needs dyn.imagination_memory=xl (the K/V cache)")
        if self.runtime.cuda_graphs and not self.runtime.static_imagination:
            raise ConfigError("runtime.cuda_graphs=True needs runtime.static_imagination=True (static shapes)")

    def hash(self) -> str:
        """Stable 10-hex-digit identity of everything that changes results (runtime excluded)."""
        ident = {k: v for k, v in self.to_dict().items() if not k.startswith("runtime.")}
        text = json.dumps(ident, sort_keys=True, default=_json_default)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))


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
        runtime=replace(base.runtime, threads=1),
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
    "EnvConfig",
    "ObservationConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "WorldModelConfig",
    "paper",
    "parse_overrides",
    "preset",
    "smoke",
]
