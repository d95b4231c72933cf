"""The released TWM code's names (jrobine/twm @ e6a8e59) mapped to ours: its config keys and its parameter
names, so that its state dicts load into an `Agent` (checks against the released code's own numbers, and
evaluating checkpoints trained with it).

A released agent checkpoint is `{"config": <CONFIGS['default']-style dict, plus run keys such as "game">,
"state_dict": Agent.state_dict()}`, with world-model parameters under `wm.` and the actor-critic's under
`ac.`. The correspondences below were checked name by name against the golden fixture's sidecar
(tests/golden/, its `reimpl_name` of every parameter and its `config_key_map`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from twm.config import Config, ConfigError, paper

# --------------------------------------------------------------------------------- config keys
# Released key -> our dotted key (the value carries over unchanged).
CONFIG_KEYS = {
    "buffer_capacity": "buffer.capacity", "buffer_temperature": "buffer.temperature",
    "buffer_prefill": "buffer.prefill",
    "budget": "schedule.budget", "pretrain_budget": "schedule.pretrain_budget",
    "pretrain_obs_p": "schedule.pretrain_obs_fraction", "pretrain_dyn_p": "schedule.pretrain_dyn_fraction",
    "eval_every": "schedule.eval_every", "eval_episodes": "schedule.eval_episodes",
    "final_eval_episodes": "schedule.final_eval_episodes",
    "env_frame_size": "env.screen_size", "env_frame_skip": "env.frame_skip", "env_frame_stack": "env.frame_stack",
    "env_noop_max": "env.noop_max", "env_time_limit": "env.time_limit", "env_episodic_lives": "env.episodic_lives",
    "env_reward_transform": "env.reward_transform", "env_discount_factor": "ac.gamma",
    "env_discount_lambda": "ac.gae_lambda",
    "wm_batch_size": "wm.batch_size", "wm_sequence_length": "wm.sequence_length", "wm_train_steps": "wm.train_steps",
    "wm_memory_length": "dyn.memory_length", "wm_discount_threshold": "dyn.discount_threshold",
    "z_categoricals": "obs.num_categoricals", "z_categories": "obs.num_classes", "obs_channels": "obs.channels",
    "obs_lr": "obs.lr", "obs_wd": "obs.weight_decay", "obs_eps": "obs.eps", "obs_grad_clip": "obs.grad_clip",
    "obs_entropy_coef": "obs.entropy_coef", "obs_entropy_threshold": "obs.entropy_threshold",
    "obs_consistency_coef": "obs.consistency_coef", "obs_decoder_coef": "obs.decoder_coef",
    "dyn_embed_dim": "dyn.embed_dim", "dyn_num_heads": "dyn.num_heads", "dyn_num_layers": "dyn.num_layers",
    "dyn_feedforward_dim": "dyn.feedforward_dim", "dyn_z_dims": "dyn.latent_head_hidden",
    "dyn_reward_dims": "dyn.reward_head_hidden", "dyn_discount_dims": "dyn.discount_head_hidden",
    "dyn_input_rewards": "dyn.input_rewards", "dyn_input_discounts": "dyn.input_discounts",
    "dyn_dropout": "dyn.dropout", "dyn_lr": "dyn.lr", "dyn_wd": "dyn.weight_decay", "dyn_eps": "dyn.eps",
    "dyn_grad_clip": "dyn.grad_clip", "dyn_z_coef": "dyn.latent_coef", "dyn_reward_coef": "dyn.reward_coef",
    "dyn_discount_coef": "dyn.discount_coef",
    "ac_batch_size": "ac.batch_size", "ac_horizon": "ac.horizon", "ac_input_h": "ac.input_h",
    "ac_normalize_advantages": "ac.normalize_advantages",
    "actor_dims": "ac.actor_hidden", "actor_lr": "ac.actor_lr", "actor_eps": "ac.eps", "actor_wd": "ac.weight_decay",
    "actor_entropy_coef": "ac.entropy_coef", "actor_entropy_threshold": "ac.entropy_threshold",
    "actor_grad_clip": "ac.grad_clip",
    "critic_dims": "ac.critic_hidden", "critic_lr": "ac.critic_lr", "critic_eps": "ac.eps",
    "critic_wd": "ac.weight_decay", "critic_grad_clip": "ac.grad_clip",
}
# Released keys whose other values the re-implementation does not have: they must hold these.
FIXED_VALUES = {
    "env_grayscale": True, "obs_act": "silu", "obs_norm": "none", "obs_dropout": 0, "dyn_act": "silu",
    "dyn_norm": "none", "ac_act": "silu", "ac_norm": "none", "ac_dropout": 0, "ac_h_norm": "none",
    "critic_target_interval": 1,
}
DERIVED_KEYS = ("dyn_head_dim",)  # must equal dyn_embed_dim / dyn_num_heads


def config_from_released(released: Mapping[str, Any], encoder_hidden: tuple[int, ...] = (512, 512)) -> Config:
    """Our Config for a released config dict. The released encoder MLP widths are hard-coded (512, 512) and its
    decoder width is 16 * obs_channels; keys outside the released CONFIGS['default'] (game, seed, ...) are
    run options and are ignored. A value the re-implementation cannot express is a ConfigError."""
    overrides: dict[str, Any] = {"obs.encoder_hidden": tuple(encoder_hidden)}
    for key, value in released.items():
        if key in CONFIG_KEYS:
            if isinstance(value, list):
                value = tuple(value)
            elif value == "inf":  # buffer_temperature: the released near-uniform rule; ours is exactly uniform
                value = math.inf
            target = CONFIG_KEYS[key]
            if overrides.setdefault(target, value) != value:
                raise ConfigError(f"released keys for {target} disagree: {overrides[target]!r} and {value!r}")
        elif key in FIXED_VALUES and value != FIXED_VALUES[key]:
            raise ConfigError(f"released {key}={value!r} is not supported (only {FIXED_VALUES[key]!r})")
    config = paper().with_overrides(overrides)
    config = config.with_overrides({"obs.decoder_hidden": 16 * config.obs.channels})
    head_dim = released.get("dyn_head_dim")
    if head_dim is not None and head_dim * config.dyn.num_heads != config.dyn.embed_dim:
        raise ConfigError(f"released dyn_head_dim={head_dim} is not dyn_embed_dim / dyn_num_heads "
                          f"({config.dyn.embed_dim} / {config.dyn.num_heads}); only that is supported")
    return config


# ----------------------------------------------------------------------------- parameter names
# (released pattern, our name): indices are positions in our nn.Sequential stacks, in the order the
# released modules number their layers (encoder: 4 convs + SiLU, Flatten, then the MLP; heads start with
# a SiLU and repeat Linear, SiLU, Dropout; actor and critic repeat Linear, SiLU).
_HEADS = {"z": "latent_head", "r": "reward_head", "g": "discount_head"}
_RULES: list[tuple[re.Pattern, Any]] = [(re.compile(p), f) for p, f in (
    (r"obs_model\.encoder\.0\.conv(\d+)\.(\w+)", lambda i, w: f"obs_model.encoder.{2 * (int(i) - 1)}.{w}"),
    (r"obs_model\.encoder\.2\.linear(\d+)\.(\w+)", lambda j, w: f"obs_model.encoder.{9 + 2 * (int(j) - 1)}.{w}"),
    (r"obs_model\.decoder\.0\.linear1\.(\w+)", lambda w: f"obs_model.decoder_fc.0.{w}"),
    (r"obs_model\.decoder\.2\.conv_transpose(\d+)\.(\w+)", lambda i, w: f"obs_model.decoder.{2 * (int(i) - 1)}.{w}"),
    (r"dyn_model\.prediction_net\.embeds\.a\.weight", lambda: "dyn_model.a_embed.weight"),
    (r"dyn_model\.prediction_net\.embeds\.([zr])\.linear1\.(\w+)", lambda m, w: f"dyn_model.{m}_embed.0.{w}"),
    (r"dyn_model\.prediction_net\.transformer\.([uv])_bias", lambda m: f"dyn_model.transformer.{m}"),
    (r"dyn_model\.prediction_net\.transformer\.layers\.(.+)", lambda rest: f"dyn_model.transformer.layers.{rest}"),
    (r"dyn_model\.prediction_net\.out_heads\.([zrg])\.linear(\d+)\.(\w+)",
     lambda m, j, w: f"dyn_model.{_HEADS[m]}.net.{1 + 3 * (int(j) - 1)}.{w}"),
    (r"ac\.(actor|critic)_model\.linear(\d+)\.(\w+)", lambda m, j, w: f"{m}.net.{2 * (int(j) - 1)}.{w}"),
)]


def reimpl_name(released: str) -> str:
    """Our parameter name for a released one (world-model names with or without the checkpoint's `wm.`)."""
    name = released.removeprefix("wm.")
    for pattern, rename in _RULES:
        match = pattern.fullmatch(name)
        if match:
            return rename(*match.groups())
    raise KeyError(f"no re-implementation parameter for the released name {released!r}")


def convert_state_dict(released: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released state dict under our parameter names."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in released.items():
        ours = reimpl_name(name)
        if ours in out:
            raise KeyError(f"two released parameters map to {ours!r}")
        out[ours] = tensor
    return out


def load_released_checkpoint(path: Path, device: str = "cpu"):
    """(game, agent) of a checkpoint written by the released code, ready to evaluate (eval mode)."""
    from twm.agent import Agent

    checkpoint = torch.load(path, map_location=device, weights_only=True)
    config = config_from_released(checkpoint["config"])
    state = convert_state_dict(checkpoint["state_dict"])
    agent = Agent(config, state["dyn_model.a_embed.weight"].shape[0], device)
    agent.load_state_dict(state)
    return checkpoint["config"].get("game"), agent.eval()
