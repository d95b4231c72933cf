"""The device-side balanced replay sampler (twm/sampling.py) against today's ReplayBuffer.sample_starts:
the same starts under one seed on a CPU, the softmax(-v/tau) distribution by chi-square tests, no
sync-prone ops, and (CUDA only) the same distribution drawn on the GPU without host syncs."""

import math

import pytest
import torch
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

from twm.replay import ReplayBuffer
from twm.sampling import balanced_starts

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU sampler needs a CUDA device")
VISITS = torch.tensor([0, 1, 2, 3, 5, 8, 0, 4, 2, 1])  # 10 starts with uneven visit counts
TAU = 2.0  # probabilities from 0.02 to 0.2: a sign or temperature error is visible at once


@pytest.mark.parametrize("temperature", [20.0, math.inf, 0.5])
def test_device_sampler_draws_todays_starts_and_visits_under_one_seed(temperature):
    buffer = ReplayBuffer(3_000, (1, 1, 1))
    buffer.size = 3_000
    buffer.visits[:] = torch.poisson(torch.full((3_000,), 5.0), generator=torch.Generator().manual_seed(0)).long()
    visits = buffer.visits.clone()
    for seed in range(4):
        torch.manual_seed(seed)
        today = buffer.sample_starts(100, 16, temperature)
        torch.manual_seed(seed)
        device = balanced_starts(visits, 3_000 - 16 + 1, 100, temperature)
        assert torch.equal(device, today) and len(set(device.tolist())) == 100
    assert torch.equal(visits, buffer.visits)


def first_and_inclusion_counts(draw, trials: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Over `trials` draws of n starts from VISITS (fresh counts each time): how often each start came first,
    and how often it was drawn at all."""
    first, included = torch.zeros(len(VISITS)), torch.zeros(len(VISITS))
    for _ in range(trials):
        starts = draw().cpu()
        first[starts[0]] += 1
        included[starts] += 1
    return first, included


def check_distribution(draw, reference_draw, trials: int = 6_000, n: int = 3) -> None:
    """First draws follow softmax(-v/tau) exactly (goodness of fit); inclusion counts match those of the
    reference sampler (chi-square test of homogeneity). Each at significance 1e-4."""
    p = torch.softmax(-VISITS.double() / TAU, 0)
    first, included = first_and_inclusion_counts(draw, trials, n)
    assert stats.chisquare(first.numpy(), (p * trials).numpy()).pvalue > 1e-4
    _, reference = first_and_inclusion_counts(reference_draw, trials, n)
    assert stats.chi2_contingency(torch.stack([included, reference]).numpy()).pvalue > 1e-4


def test_device_sampler_follows_the_softmax_of_visit_counts_like_multinomial():
    torch.manual_seed(0)
    check_distribution(lambda: balanced_starts(VISITS.clone(), len(VISITS), 3, TAU),
                       lambda: torch.multinomial(torch.softmax(-VISITS.double() / TAU, 0), 3, replacement=False))


def test_distribution_check_rejects_a_sampler_with_the_wrong_sign():
    """The chi-square check above can fail: softmax(+v/tau) is told apart."""
    torch.manual_seed(0)
    with pytest.raises(AssertionError):
        check_distribution(lambda: balanced_starts(-VISITS, len(VISITS), 3, TAU),
                           lambda: balanced_starts(VISITS.clone(), len(VISITS), 3, TAU))


def test_device_sampler_dispatches_no_sync_prone_ops_and_no_multinomial():
    """CPU proxy: no .item()/nonzero-style op, and not torch.multinomial, whose input checks read the
    probabilities on the host (seen on CUDA below)."""
    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        balanced_starts(torch.zeros(1_000, dtype=torch.long), 985, 100, 20.0)
    assert "topk" in ops.names and "index_add_" in ops.names
    assert not {"multinomial", "_local_scalar_dense", "nonzero", "is_nonzero", "item"} & set(ops.names)


@needs_cuda
def test_device_sampler_on_cuda_follows_the_same_distribution_without_host_syncs():
    visits = VISITS.cuda()
    torch.manual_seed(0)
    check_distribution(lambda: balanced_starts(visits.clone(), len(VISITS), 3, TAU),
                       lambda: torch.multinomial(torch.softmax(-VISITS.double() / TAU, 0), 3, replacement=False))
    big = torch.zeros(100_000, dtype=torch.long, device="cuda")
    balanced_starts(big, 99_985, 100, 20.0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        starts = balanced_starts(big, 99_985, 100, 20.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert starts.is_cuda and int(big.sum()) == 200 and len(set(starts.tolist())) == 100
    probs = torch.softmax(-big.double() / 20.0, 0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):  # what the device sampler avoids
            torch.multinomial(probs, 100, replacement=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
