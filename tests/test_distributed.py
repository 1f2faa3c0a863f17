"""Layers that span the ranks (``scetm_mnn._distributed``): 2 gloo processes act as one."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from scetm_mnn._distributed import (
    MomentBatchNorm1d,
    RankDropout,
    RankStandardNormal,
    StandardNormal,
    convert_layers,
    synced_layers,
)

N, C = 10, 4


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, generator=generator) * 3 + 1
    weights = torch.randn(N, C, generator=generator)
    return x, weights


def _layers():
    torch.manual_seed(1)
    norm = nn.BatchNorm1d(C)
    with torch.no_grad():
        norm.weight.uniform_()
        norm.bias.uniform_()
    return nn.Sequential(norm, nn.Dropout(0.3)), StandardNormal()


def _step(x, weights, net, noise):
    """One forward and backward; returns outputs, input gradient, noise and BatchNorm state."""
    x = x.clone().requires_grad_()
    torch.manual_seed(2)  # every rank holds the same random stream
    out = net(x)
    eps = noise(out)
    (out * weights + eps).sum().backward()
    norm = net[0]
    return out.detach(), x.grad, eps, norm.weight.grad, norm.running_mean, norm.running_var


def _rank(rank: int, store: str, queue) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2
    )
    try:
        x, weights = _data()
        net, noise = _layers()
        with synced_layers(net), synced_layers(noise):
            assert isinstance(net[0], MomentBatchNorm1d) and isinstance(net[1], RankDropout)
            assert isinstance(noise, RankStandardNormal)
            result = _step(x[rank::2], weights[rank::2], net, noise)
        assert type(net[0]) is nn.BatchNorm1d and type(noise) is StandardNormal
        queue.put((rank, [t.detach().numpy().copy() for t in result]))  # by value
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    store = tmp_path_factory.mktemp("gloo") / "store"  # a file, not a port that may be taken
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank, args=(r, store, queue)) for r in (0, 1)]
    for p in processes:
        p.start()
    results = {
        rank: [torch.from_numpy(a) for a in arrays]
        for rank, arrays in (queue.get(timeout=120) for _ in processes)
    }
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_two_ranks_compute_what_one_process_does_on_the_whole_minibatch(two_ranks):
    x, weights = _data()
    net, noise = _layers()
    out, grad, eps, weight_grad, mean, var = _step(x, weights, net, noise)
    for rank in (0, 1):
        r_out, r_grad, r_eps, _, r_mean, r_var = two_ranks[rank]
        torch.testing.assert_close(r_out, out[rank::2])  # statistics and mask of all N
        torch.testing.assert_close(r_grad, grad[rank::2])  # the gradient through them
        torch.testing.assert_close(r_eps, eps[rank::2])  # the same draws
        torch.testing.assert_close(r_mean, mean)  # running statistics equal everywhere
        torch.testing.assert_close(r_var, var)
    torch.testing.assert_close(two_ranks[0][3] + two_ranks[1][3], weight_grad)


def test_one_process_is_unchanged_bit_for_bit():
    x, weights = _data()
    plain = _step(x, weights, *_layers())
    net, noise = _layers()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with synced_layers(net), synced_layers(noise):
        synced = _step(x, weights, net, noise)
    for a, b in zip(plain, synced, strict=True):
        assert torch.equal(a, b)
    assert net.state_dict().keys() == state.keys()


def test_standard_normal_draws_as_rsample_does():
    mu, sigma = torch.zeros(5, 3), torch.full((5, 3), 2.0)
    torch.manual_seed(0)
    expected = torch.distributions.Normal(mu, sigma).rsample()
    torch.manual_seed(0)
    assert torch.equal(mu + StandardNormal()(mu) * sigma, expected)


def test_convert_layers_reverts_and_leaves_other_layers():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.1), StandardNormal())
    convert_layers(net)
    assert [type(m).__name__ for m in net] == [
        "Linear",
        "MomentBatchNorm1d",
        "RankDropout",
        "RankStandardNormal",
    ]
    convert_layers(net, sync=False)
    assert [type(m) for m in net] == [nn.Linear, nn.BatchNorm1d, nn.Dropout, StandardNormal]
