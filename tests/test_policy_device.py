"""Policy.act on an observation already on the agent's device (the replay buffer's current frame): the same
actions as from a numpy array, returned as a device tensor, and (CUDA only) no host round trip."""

import numpy as np
import pytest
import torch

from twm.agent import Agent
from twm.config import smoke

A = 5


@pytest.mark.parametrize("input_h", [False, True])
def test_policy_acts_on_a_tensor_exactly_as_on_a_numpy_array(input_h):
    torch.manual_seed(0)
    agent = Agent(smoke().with_overrides({"ac.input_h": input_h}), A)
    frames = np.random.default_rng(0).integers(0, 256, (6, 1, 4, 64, 64), dtype=np.uint8)
    actions = {}
    for kind in ("numpy", "tensor"):
        policy = agent.make_policy(1)
        torch.manual_seed(1)
        taken = []
        for t, obs in enumerate(frames):
            a = policy.act(obs if kind == "numpy" else torch.from_numpy(obs))
            taken.append(a)
            policy.observe(np.array([0.5 * t], dtype=np.float32), np.array([t == 3]))
        actions[kind] = taken
    for a_np, a_t in zip(actions["numpy"], actions["tensor"], strict=True):
        assert isinstance(a_np, np.ndarray) and isinstance(a_t, torch.Tensor) and a_t.dtype == torch.int64
        assert a_np.tolist() == a_t.tolist()
    with pytest.raises(ValueError, match="expected observations"):
        agent.make_policy(1).act(torch.zeros(2, 4, 64, 64, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device-resident acting needs a CUDA device")
def test_policy_acts_on_a_cuda_frame_without_host_syncs_on_cuda():
    agent = Agent(smoke(), A, "cuda")
    policy = agent.make_policy(1)
    buffer_obs = torch.randint(0, 256, (10, 4, 64, 64), dtype=torch.uint8, device="cuda")
    policy.act(buffer_obs[3][None])  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        action = policy.act(buffer_obs[4][None])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert action.is_cuda and action.shape == (1,) and 0 <= int(action[0]) < A
