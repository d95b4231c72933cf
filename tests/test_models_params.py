"""Parameter counts at paper size equal spec §11 exactly (and the ablation deltas). Modules are built on
the meta device (shapes only), which keeps this test fast."""

import pytest
import torch

from twm.actor_critic import Actor, Critic
from twm.agent import Agent
from twm.config import paper
from twm.dynamics_model import DynamicsModel
from twm.observation_model import ObservationModel


def count(build) -> int:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def obs_count():
    return count(lambda: ObservationModel(paper()))


def test_observation_model_has_8234532_parameters(obs_count):
    assert obs_count == 8_234_532


@pytest.mark.parametrize("num_actions", [4, 18])
def test_dynamics_actor_critic_counts_match_spec(num_actions):
    cfg = paper()
    assert count(lambda: DynamicsModel(cfg, num_actions)) == 10_777_858 + 256 * num_actions
    assert count(lambda: Actor(cfg, num_actions)) == 1_312_768 + 513 * num_actions
    assert count(lambda: Critic(cfg)) == 1_313_281


def test_no_reward_input_removes_512_dynamics_parameters():
    cfg = paper().with_overrides({"dyn.input_rewards": False})
    assert count(lambda: DynamicsModel(cfg, 18)) == 10_782_466 - 512


def test_policy_input_h_adds_131072_to_actor_and_critic():
    cfg = paper().with_overrides({"ac.input_h": True})
    assert count(lambda: Actor(cfg, 18)) == 1_322_002 + 131_072
    assert count(lambda: Critic(cfg)) == 1_313_281 + 131_072


def test_history_length_4_leaves_counts_unchanged():
    cfg = paper().with_overrides({"wm.sequence_length": 4, "dyn.memory_length": 4})
    assert count(lambda: DynamicsModel(cfg, 18)) == 10_782_466


def test_agent_param_counts_total_at_a_18():
    with torch.device("meta"):
        agent = Agent(paper(), 18, device="meta")
    assert agent.param_counts() == {"observation": 8_234_532, "dynamics": 10_782_466, "actor": 1_322_002,
                                    "critic": 1_313_281, "total": 21_652_281}


def test_decoder_output_bias_keeps_pytorch_default_init():
    """The released decoder's final ConvTranspose2d bias stays at PyTorch's default U(+-1/sqrt(fan_in)): its
    0.5 init only touches Linear and Conv2d (spec §3)."""
    torch.manual_seed(0)
    final = ObservationModel(paper()).decoder[-1]
    fan_in = final.weight.shape[1] * final.weight[0, 0].numel()  # PyTorch's fan_in of a transposed conv
    assert final.bias.abs().max().item() <= 1 / fan_in ** 0.5
    assert final.bias.std().item() > 0  # drawn, not a constant
