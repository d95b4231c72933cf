"""Every quantity of the released code's golden fixtures, reproduced in float64 through the functions training
uses (Agent.world_model_step / world_model_pass, Imagination and imagine, Agent.actor_critic_pass / ac_update).

A fixture is `<case>.npz` + `<case>.json` (format: tests/golden/README.md, a byte-identical copy of the
fixture folder made by running the released jrobine/twm @ e6a8e59 in float64). The folder is
$TWM_GOLDEN_DIR, by default tests/golden/; every fixture in it is checked the same way. Weights are loaded by
their released names (twm.release), the config comes from the fixture's sidecar, and every recorded draw
(latent classes, imagined actions, imagined latents, restart latents) is replayed, never drawn. Tolerance
per tensor: max|got - ref| <= 1e-10 * max(1, max|ref|); discrete tensors exactly."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from twm.agent import Agent, eval_mode
from twm.config import Config, preset
from twm.dynamics_model import attention_mask, discount_targets, latent_weights
from twm.imagination import MEMORY_KINDS, FixedActions, Imagination, imagine, start_candidates
from twm.observation_model import latent_entropy
from twm.release import CONFIG_KEYS, DERIVED_KEYS, FIXED_VALUES, config_from_released, convert_state_dict
from twm.replay import SeqBatch

GOLDEN_DIR = Path(os.environ.get("TWM_GOLDEN_DIR") or Path(__file__).parent / "golden")
FIXTURES = sorted(GOLDEN_DIR.glob("*.npz"))
RTOL = 1e-10
# Recorded inputs and draws: fed to the model, not computed by it.
INPUTS = {"obs", "actions", "rewards", "terminated", "truncated", "z_index", "imag_start_index",
          "imag_restart_z_used"}


def load_fixture(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with np.load(path) as arrays:
        tensors = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    return tensors, json.loads(path.with_suffix(".json").read_text())


def fixture_config(sidecar: dict) -> Config:
    """The re-implementation's config of a fixture: its base preset plus its dotted overrides."""
    base = re.fullmatch(r"twm\.config\.(\w+)\(\)", sidecar["config_reimpl_base"])
    assert base, f"unknown config base {sidecar['config_reimpl_base']!r}"
    return preset(base.group(1)).with_overrides(sidecar["config_reimpl_overrides"])


def fresh_agent(ref: dict[str, torch.Tensor], sidecar: dict, config: Config) -> Agent:
    """A float64 agent with the fixture's weights, loaded by their released names."""
    agent = Agent(config, sidecar["num_actions"]).double()
    released = {k.removeprefix("param/"): v for k, v in ref.items() if k.startswith("param/")}
    agent.load_state_dict(convert_state_dict(released))
    return agent


class RecordedLatents:
    """`sample` for Imagination: z_{t+1} of the recorded trajectory (M, H+1, C*K) at each step."""

    def __init__(self, z: torch.Tensor):
        self.z, self.t = z, 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.t += 1
        return self.z[:, self.t]


class RecordedRestarts:
    """`restart` for Imagination: the recorded restart latents (R, C*K), handed out in order of use (step by
    step, rows in order within a step)."""

    def __init__(self, used: torch.Tensor):
        self.used, self.next = used, 0

    def __call__(self, done: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(done.shape[0], self.used.shape[1], dtype=self.used.dtype)
        rows = done.nonzero().flatten()
        out[rows] = self.used[self.next:self.next + len(rows)]
        self.next += len(rows)
        return out


def grads(agent: Agent, prefix_map: dict[str, str]) -> dict[str, torch.Tensor | None]:
    """`<group>/<released name>` -> the gradient now in our parameter (None: no gradient)."""
    params = dict(agent.named_parameters())
    return {key: params[ours].grad for key, ours in prefix_map.items()}


def clipped(ref: torch.Tensor, norm: torch.Tensor, clip: float) -> torch.Tensor:
    """A reference gradient as clip_grad_norm_ leaves it in training (scaled when its group's norm > clip)."""
    return ref * min(1.0, clip / (float(norm) + 1e-6))


def reproduce(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(got, ref, sidecar): every tensor of the fixture as the re-implementation computes it."""
    ref, sidecar = load_fixture(path)
    table = sidecar["tensors"]
    config = fixture_config(sidecar)
    got: dict[str, torch.Tensor] = {}
    batch = SeqBatch(actions=ref["actions"], rewards=ref["rewards"], terminated=ref["terminated"],
                     truncated=ref["truncated"], obs=ref["obs"])
    L = ref["actions"].shape[1] - 1
    dones = batch.terminated | batch.truncated
    reimpl = {key: spec["reimpl_name"] for key, spec in table.items() if "reimpl_name" in spec}

    # World model, with the released loss (no latent term) and with the latent term forced on.
    for coef, dyn_loss, dyn_grads, dyn_norm in ((0.0, "dyn_loss_released", "grad_dyn/", "gradnorm_dyn"),
                                                (1.0, "dyn_loss_with_latent", "grad_dyn_latent/",
                                                 "gradnorm_dyn_latent")):
        cfg = config.with_overrides({"dyn.latent_coef": coef})
        agent = fresh_agent(ref, sidecar, cfg)
        wm = agent.world_model_pass(agent._on_device(batch), ref["z_index"])
        metrics, _ = agent.world_model_step(agent._on_device(batch), ref["z_index"])
        got[dyn_loss], got[dyn_norm] = metrics["dyn/loss"], metrics["dyn/grad_norm"]
        for key, grad in grads(agent, {k: v for k, v in reimpl.items() if k.startswith(dyn_grads)}).items():
            got[key] = torch.zeros_like(ref[key]) if grad is None else grad
            if key.removeprefix(dyn_grads) in sidecar["params_without_grad"].get("grad_dyn", []) and coef == 0:
                assert grad is None, f"{key}: the latent head got a gradient with dyn.latent_coef 0"
            ref[key] = clipped(ref[key], ref[dyn_norm], cfg.dyn.grad_clip)
        if coef:
            got["dyn_latent_loss_forced"] = metrics["dyn/latent_loss"]
            got["dyn_latent_ce_forced"] = metrics["dyn/latent_loss"] / coef
            continue
        for key, grad in grads(agent, {k: v for k, v in reimpl.items() if k.startswith("grad_obs/")}).items():
            got[key] = grad
            ref[key] = clipped(ref[key], ref["gradnorm_obs"], cfg.obs.grad_clip)
        raw = torch.cat([wm.context_logits[:, None], wm.logits, wm.next_logits[:, None]], 1)
        o = agent._pixels(batch.obs[:, 1:L + 1])
        P = agent.dyn_model.tokens_per_step
        got.update({
            "enc_logits_raw": raw, "enc_logits": raw.log_softmax(-1), "enc_probs": raw.softmax(-1), "z": wm.z,
            "dec_mean": wm.decoded, "obs_dec_loss": metrics["obs/decoder_loss"],
            "obs_ent_loss": metrics["obs/entropy_loss"], "obs_norm_ent": metrics["obs/entropy"],
            "obs_ent": latent_entropy(wm.logits).mean(), "obs_con_ce": metrics["obs/consistency_loss"],
            "obs_con_loss": cfg.obs.consistency_coef * metrics["obs/consistency_loss"],
            "obs_loss": metrics["obs/loss"], "obs_recon_mae": (o - wm.decoded).abs().mean(),
            "gradnorm_obs": metrics["obs/grad_norm"],
            "dyn_discounts_in": discount_targets(batch.terminated, cfg.ac.gamma, torch.float64),
            "dyn_dones_in": dones,
            "dyn_attn_mask": attention_mask(L * P + 2, L * P + 2, P, cfg.dyn.memory_length, dones[:, :L]),
            "dyn_h": wm.h, "dyn_head_z_raw": wm.latent_logits, "dyn_head_r_raw": wm.reward_mean,
            "dyn_head_g_raw": wm.discount_logit, "dyn_prior_probs": wm.latent_logits[:, :-1].softmax(-1),
            "dyn_pred_z_logits": wm.latent_logits[:, 1:].log_softmax(-1), "dyn_pred_r": wm.reward_mean[:, 1:],
            "dyn_pred_g_logit": wm.discount_logit[:, 1:], "dyn_pred_g": wm.discount_logit[:, 1:].sigmoid(),
            "dyn_target_logits": wm.targets.log_softmax(-1), "dyn_target_r": batch.rewards[:, 1:],
            "dyn_target_g": discount_targets(batch.terminated[:, 1:], cfg.ac.gamma, torch.float64),
            "dyn_target_weights": latent_weights(dones[:, 1:], torch.float64),
            "dyn_reward_loss": metrics["dyn/reward_loss"], "dyn_discount_loss": metrics["dyn/discount_loss"],
            "dyn_h_norm": wm.h.norm(dim=-1).mean(),
        })
        # Imagination starts: the N*L candidates (z_k, a_k, r_k, d_k) -> z_{k+1}, at the recorded choice.
        index = ref["imag_start_index"]
        start = start_candidates(wm.z, batch.actions, batch.rewards, dones).select(index)
        got.update({"imag_start_z": torch.stack([start.z_context, start.z], 1),
                    "imag_start_actions": start.a_context[:, None], "imag_start_rewards": start.r_context[:, None],
                    "imag_start_terminated": batch.terminated[:, :L].flatten()[index][:, None],
                    "imag_start_truncated": batch.truncated[:, :L].flatten()[index][:, None]})
        assert torch.equal(start.d_context, (ref["imag_start_terminated"] | ref["imag_start_truncated"])[:, 0])

    # Imagination with the original weights, every memory kind, recorded actions and latents.
    agent = fresh_agent(ref, sidecar, config)
    for memory in MEMORY_KINDS:
        world = Imagination(agent.dyn_model, config, RecordedRestarts(ref["imag_restart_z_used"]), memory=memory,
                            sample=RecordedLatents(ref["ac_z"]))
        with eval_mode(agent.dyn_model):
            trajectory = imagine(world, FixedActions(ref["ac_actions"]), start, config.ac.horizon,
                                 config.ac.input_h)
        assert world.restart.next == len(ref["imag_restart_z_used"]), memory  # every restart used, in order
        for key, value in (("ac_z", trajectory.z), ("ac_h", trajectory.h), ("ac_actions", trajectory.actions),
                           ("ac_rewards", trajectory.rewards), ("ac_discounts", trajectory.discounts),
                           ("ac_dones", trajectory.dones), ("ac_weights", trajectory.weights)):
            got[key if memory == "kv_cache" else f"{key}@{memory}"] = value

    # Actor-critic on the imagined trajectory (the K/V-cache one, as training).
    ac = agent.actor_critic_pass(trajectory)
    A = ac.actor_logits.shape[-1]
    got.update({"ac_values": ac.values, "ac_advantages": ac.advantages, "ac_returns": ac.returns,
                "ac_values_train": ac.critic_values, "ac_actor_logits": ac.actor_logits,
                "ac_critic_loss": ac.critic_loss, "ac_actor_loss": ac.actor_losses["actor/loss"],
                "ac_reinforce": -ac.actor_losses["actor/reinforce_loss"],
                "ac_entropy_loss": ac.actor_losses["actor/entropy_loss"],
                "ac_norm_ent": ac.actor_losses["actor/entropy"],
                "ac_ent": ac.actor_losses["actor/entropy"] * math.log(A)})
    metrics = agent.ac_update(trajectory)
    got["gradnorm_critic"], got["gradnorm_actor"] = metrics["critic/grad_norm"], metrics["actor/grad_norm"]
    for group, norm in (("grad_critic/", "gradnorm_critic"), ("grad_actor/", "gradnorm_actor")):
        for key, grad in grads(agent, {k: v for k, v in reimpl.items() if k.startswith(group)}).items():
            got[key] = grad
            ref[key] = clipped(ref[key], ref[norm], config.ac.grad_clip)
    for key in list(got):
        if "@" in key:  # the reference memory paths are checked against the same recorded tensors
            ref[key] = ref[key.split("@")[0]]
    return got, ref, sidecar


def mismatch(got: torch.Tensor | None, ref: torch.Tensor) -> str | None:
    """None if got reproduces ref (exactly for discrete tensors, else to RTOL), else why not."""
    if got is None:
        return "not produced"
    got = got.detach()
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if not ref.is_floating_point():
        return None if torch.equal(got.to(ref.dtype), ref) else "discrete values differ"
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    err = (got.double() - ref).abs().max().item() if ref.numel() else 0.0
    return None if err <= RTOL * scale else f"max abs diff {err:.3g} > {RTOL:g} * {scale:.3g}"


def test_golden_folder_holds_fixtures():
    assert FIXTURES, f"no *.npz fixtures in {GOLDEN_DIR} (set TWM_GOLDEN_DIR or ship tests/golden/)"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_fixture_quantity_is_reproduced_in_float64(path):
    got, ref, sidecar = reproduce(path)
    missing = set(sidecar["tensors"]) - INPUTS - {k for k in sidecar["tensors"] if k.startswith("param/")} - set(got)
    assert not missing, f"quantities with no reproduction: {sorted(missing)}"
    failures = {key: why for key in sorted(got) if (why := mismatch(got[key], ref[key]))}
    assert not failures, f"{len(failures)} of {len(got)} quantities differ: {failures}"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_released_config_and_names_map_to_the_fixtures(path):
    ref, sidecar = load_fixture(path)
    # Every parameter name of the fixture maps to its recorded re-implementation name, and back to one weight.
    names = {k.split("/", 1)[1]: spec["reimpl_name"] for k, spec in sidecar["tensors"].items()
             if "reimpl_name" in spec}
    assert convert_state_dict(dict.fromkeys(names, 0)).keys() == set(names.values())
    assert {k: v for k, v in zip(names, convert_state_dict(dict.fromkeys(names, 0)), strict=True)} == names
    agent = Agent(fixture_config(sidecar), sidecar["num_actions"])
    assert set(agent.state_dict()) == {names[k.removeprefix("param/")] for k in ref if k.startswith("param/")}
    # The released config, converted, is the fixture's config; the key maps agree.
    for key, ours in sidecar["config_key_map"].items():
        if ours is None:
            assert key in FIXED_VALUES or key in DERIVED_KEYS, key
        else:
            assert CONFIG_KEYS[key] == ours, key
    construction = sidecar["config_released_construction"]["ObservationModel encoder MLP hidden widths"]
    converted = config_from_released(sidecar["config_released_full"], encoder_hidden=tuple(construction))
    assert converted == fixture_config(sidecar)
