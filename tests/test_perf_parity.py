"""Speed work against the plain fp32 eager path on fixed inputs (issue 5): the K/V cache, fused attention
with the relative-position bias, fused Adam with coupled L2 decay, and (GPU only) sync-free steps."""

import copy

import pytest
import torch

from twm.actor_critic import Actor
from twm.agent import Agent
from twm.config import paper, smoke
from twm.dynamics_model import DynamicsModel
from twm.imagination import Imagination, StartStates, imagine
from twm.observation_model import sample_latent

A = 6


def parity_config():
    """The paper's token layout, latents, memory (16 steps) and horizon (15) with narrower layers (fast)."""
    return paper().with_overrides({"dyn.embed_dim": 64, "dyn.num_layers": 3, "dyn.feedforward_dim": 128,
                                   "dyn.latent_head_hidden": (128,), "dyn.reward_head_hidden": (64,),
                                   "dyn.discount_head_hidden": (64,), "ac.actor_hidden": (64, 64)})


def paper_dynamics() -> tuple[DynamicsModel, Actor]:
    """Dynamics model and actor of `parity_config`, eval mode, fixed init."""
    torch.manual_seed(0)
    config = parity_config()
    return DynamicsModel(config, A).eval(), Actor(config, A).eval()


def random_starts(M: int, C: int = 32, K: int = 32) -> tuple[StartStates, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = lambda n: sample_latent(torch.randn(n, C, K, generator=g))  # noqa: E731
    start = StartStates(z_context=z(M), a_context=torch.randint(A, (M,), generator=g),
                        r_context=torch.randn(M, generator=g), d_context=torch.rand(M, generator=g) < 0.2,
                        z=z(M))
    return start, torch.randn(64, C, K, generator=g)


@torch.no_grad()
def test_kv_cache_hidden_states_equal_layer_input_memory_and_vanilla():
    dyn, _ = paper_dynamics()
    start, _ = random_starts(8)
    g = torch.Generator().manual_seed(2)
    steps = [(torch.randn(8, generator=g), sample_latent(torch.randn(8, 32, 32, generator=g)),
              torch.randint(A, (8,), generator=g), torch.rand(8, generator=g) < 0.15) for _ in range(15)]
    hidden = {}
    for name, world in (("kv", Imagination(dyn, "xl", kv_cache=True, steps=15)),
                        ("inputs", Imagination(dyn, "xl", kv_cache=False)),
                        ("vanilla", Imagination(dyn, "vanilla"))):
        hs = [world.reset(start.z_context, start.a_context, start.d_context)]
        for r, z, a, d in steps:
            hs.append(world.step(r, z, a))
            world.end_step(d)
        hidden[name] = torch.stack(hs, 1)  # (M, 16, D)
    assert (hidden["kv"] - hidden["inputs"]).abs().max().item() <= 1e-5
    assert (hidden["kv"] - hidden["vanilla"]).abs().max().item() <= 1e-5


def test_kv_cache_grows_past_its_preallocated_size():
    dyn, _ = paper_dynamics()
    world = Imagination(dyn, "xl", kv_cache=True, steps=1)
    start, _ = random_starts(2)
    with torch.no_grad():
        world.reset(start.z_context, start.a_context, start.d_context)
        for _ in range(3):
            world.step(start.r_context, start.z, start.a_context)
            world.end_step(start.d_context)
    assert world.cache.length == 2 + 3 * 3 and world.cache.capacity >= world.cache.length


@pytest.mark.parametrize("memory", ["vanilla", "inputs"])
def test_imagined_trajectory_with_kv_cache_equals_reference_paths_under_fixed_rng(memory):
    dyn, actor = paper_dynamics()
    start, restart_logits = random_starts(16)
    config = parity_config()
    torch.manual_seed(3)
    kv = imagine(dyn, actor, start, restart_logits, config, kv_cache=True)
    reference_config = config.with_overrides({"dyn.imagination_memory": "vanilla"}) if memory == "vanilla" \
        else config
    torch.manual_seed(3)
    ref = imagine(dyn, actor, start, restart_logits, reference_config, kv_cache=False)
    assert torch.equal(kv.z, ref.z) and torch.equal(kv.actions, ref.actions)
    assert torch.equal(kv.dones, ref.dones)
    for name in ("h", "rewards", "discounts", "weights"):
        assert (getattr(kv, name) - getattr(ref, name)).abs().max().item() <= 1e-5, name


def window(dyn: DynamicsModel, B: int = 4, T: int = 16):
    g = torch.Generator().manual_seed(4)
    z = sample_latent(torch.randn(B, T + 1, 32, 32, generator=g))
    return (z, torch.randint(A, (B, T + 1), generator=g), torch.randn(B, T, generator=g),
            torch.rand(B, T, generator=g) < 0.15)


def test_fused_attention_matches_materialised_attention_outputs_and_gradients():
    dyn, _ = paper_dynamics()
    math_dyn = copy.deepcopy(dyn)
    for layer in math_dyn.transformer.layers:
        layer.self_attn.fused = False
    z, a, r, stop = window(dyn)
    results = []
    for model in (dyn, math_dyn):
        model.zero_grad()
        h = model(z, a, r, stop)  # eval mode: no dropout, so both paths are deterministic
        h.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((h.detach(), grads))
    (h_fused, g_fused), (h_math, g_math) = results
    assert (h_fused - h_math).abs().max().item() <= 1e-5
    assert g_fused.keys() == g_math.keys() and len(g_fused) > 0
    for name, grad in g_fused.items():
        torch.testing.assert_close(grad, g_math[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_attention_applies_attention_dropout_in_training_only():
    dyn, _ = paper_dynamics()
    attn = dyn.transformer.layers[0].self_attn
    x, rel = torch.randn(2, 5, 64), dyn.transformer.sinusoids[:5]
    mask = torch.zeros(2, 5, 5, dtype=torch.bool)
    args = (x, None, rel, dyn.transformer.u, dyn.transformer.v, mask)
    torch.testing.assert_close(attn(*args), attn(*args))  # eval: deterministic
    attn.train()
    assert not torch.allclose(attn(*args), attn(*args))  # training: dropout p=0.1 on the probabilities


def test_fused_adam_step_equals_plain_adam_with_coupled_weight_decay():
    agent = Agent(smoke(), A)
    optimizer = agent.dyn_optimizer
    assert optimizer.defaults["fused"] and optimizer.defaults["weight_decay"] > 0
    params = list(agent.dyn_model.parameters())
    reference_params = [p.detach().clone().requires_grad_() for p in params]
    hp = {k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "weight_decay")}
    hp["weight_decay"] = 1e-2  # large enough that decoupled (AdamW) decay would differ visibly
    for group in optimizer.param_groups:
        group["weight_decay"] = hp["weight_decay"]
    reference = torch.optim.Adam(reference_params, foreach=False, fused=False, **hp)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        for p, q in zip(params, reference_params, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(params, reference_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-sync detection needs a CUDA device")
def test_train_step_makes_no_host_syncs_on_cuda():
    from twm.replay import SeqBatch

    agent = Agent(smoke(), A, "cuda")
    N, L = 4, smoke().wm.sequence_length
    batch = SeqBatch(actions=torch.randint(A, (N, L + 1)), rewards=torch.randn(N, L + 1),
                     terminated=torch.rand(N, L + 1) < 0.15, truncated=torch.zeros(N, L + 1, dtype=torch.bool),
                     obs=torch.randint(0, 256, (N, L + 2, 4, 64, 64), dtype=torch.uint8))
    obs_pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8, device="cuda")
    sample = lambda n: obs_pool[torch.randint(64, (n,), device="cuda")]  # noqa: E731
    agent.train_step(batch, sample)  # warm-up (lazy init, allocator)
    batch = agent._on_device(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        agent.train_step(batch, sample)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_acting_encoder_path_equals_training_encoder():
    torch.manual_seed(0)
    obs_model = Agent(paper().with_overrides({"obs.channels": 16}), A).obs_model
    o = torch.rand(3, 4, 64, 64)
    with torch.no_grad():
        fast, plain = obs_model.encode_for_acting(o), obs_model.encode(o)
    assert (fast - plain).abs().max().item() <= 1e-5
    assert torch.equal(fast.argmax(-1), plain.argmax(-1))


def bf16_drift_batch(N: int, L: int):
    from twm.replay import SeqBatch

    g = torch.Generator().manual_seed(6)
    return SeqBatch(actions=torch.randint(A, (N, L + 1), generator=g), rewards=torch.randn(N, L + 1, generator=g),
                    terminated=torch.rand(N, L + 1, generator=g) < 0.1,
                    truncated=torch.zeros(N, L + 1, dtype=torch.bool),
                    obs=torch.randint(0, 256, (N, L + 2, 4, 64, 64), dtype=torch.uint8, generator=g))


def test_bf16_autocast_world_model_losses_drift_little_from_fp32():
    """Fidelity drift of the "bf16" switch on one world-model update from the same weights and RNG."""
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        agent = Agent(smoke().with_overrides({"runtime.precision": precision}), A)
        o = agent._pixels(bf16_drift_batch(4, 4).obs)
        torch.manual_seed(1)
        metrics, loss, logits = agent._obs_losses(o[:, 1:5])
        losses[precision] = (loss.item(), metrics["obs/decoder_loss"].item(), logits.softmax(-1))
    (loss32, dec32, p32), (loss16, dec16, p16) = losses["fp32"], losses["bf16"]
    assert abs(dec16 - dec32) / abs(dec32) < 1e-2 and abs(loss16 - loss32) / abs(loss32) < 1e-2
    assert (p16 - p32).abs().max().item() < 0.05


def test_compile_switch_on_cpu_is_a_clear_error():
    from twm.config import ConfigError

    with pytest.raises(ConfigError, match="CUDA"):
        Agent(smoke().with_overrides({"runtime.compile": True}), A)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile parity is checked on CUDA only")
def test_compiled_train_step_matches_eager_on_cuda():
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        # dropout 0: inductor draws dropout masks from its own RNG stream
        agent = Agent(smoke().with_overrides({"runtime.compile": compiled, "dyn.dropout": 0.0}), A, "cuda")
        pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8, device="cuda")
        torch.manual_seed(1)
        metrics = agent.train_step(bf16_drift_batch(8, 4), lambda n, pool=pool: pool[:n])
        results.append({k: v.item() for k, v in metrics.items()})
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key


def test_train_step_dispatches_no_sync_prone_ops():
    """CPU proxy for "no host syncs in a training iteration": no .item()/nonzero-style op is dispatched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    agent = Agent(smoke(), A)
    batch = bf16_drift_batch(8, smoke().wm.sequence_length)
    pool = torch.randint(0, 256, (64, 4, 64, 64), dtype=torch.uint8)
    sample = lambda n: pool[torch.randint(64, (n,))]  # noqa: E731
    agent.train_step(batch, sample)
    recorder = Recorder()
    with recorder:
        agent.train_step(batch, sample)
    assert len(recorder.names) > 500  # the whole step was seen
    syncing = [n for n in recorder.names if n.split(".")[0] in
               ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "equal")]
    assert syncing == []
