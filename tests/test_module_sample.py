"""Vectorised posterior predictive draws: ``ETMModule.sample`` and its multinomial sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from scetm_mnn.module import ETMModule
from scetm_mnn.module._likelihood import multinomial_log_prob, sample_multinomial


def _loop_reference(probs: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """The former cell-by-cell draw: ``totals[i]`` categorical draws from row ``i``, counted."""
    return torch.stack(
        [
            torch.bincount(
                torch.multinomial(p, int(n), replacement=True), minlength=p.shape[-1]
            ).float()
            if n > 0
            else torch.zeros(p.shape[-1])
            for p, n in zip(probs, totals)
        ]
    )


@pytest.mark.parametrize(
    ("n_genes", "total"),
    [(10, 100), (10, 3), (400, 20)],
    ids=["poisson-path", "tiny-totals", "categorical-path"],
)
def test_sample_multinomial_matches_the_loop_in_distribution(n_genes, total):
    torch.manual_seed(0)
    n_rows = 4000
    p = torch.softmax(torch.randn(n_genes), -1)
    probs = p.expand(n_rows, n_genes).contiguous()
    totals = torch.full((n_rows,), float(total))
    new = sample_multinomial(probs, totals)
    old = _loop_reference(probs, totals)
    assert new.shape == old.shape == (n_rows, n_genes)
    np.testing.assert_array_equal(new.sum(-1), totals)
    assert torch.equal(new, new.round()) and (new >= 0).all()
    mean, var = total * p, total * p * (1 - p)
    # the mean of each count: within 5 standard errors of n·p, for both samplers
    for draws in (new, old):
        z = (draws.mean(0) - mean) / (var / n_rows).sqrt()
        assert z.abs().max() < 5, z
    # the variance of each count: n·p·(1 − p), as the loop's
    np.testing.assert_allclose(new.var(0), var, rtol=0.15, atol=0.02)
    np.testing.assert_allclose(new.var(0), old.var(0), rtol=0.2, atol=0.02)


def test_sample_multinomial_handles_mixed_and_zero_totals():
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(6, 50), -1)
    totals = torch.tensor([0.0, 1.0, 5.0, 400.0, 20000.0, 0.0])
    draws = sample_multinomial(probs, totals, max_draws=500)  # several chunks
    np.testing.assert_array_equal(draws.sum(-1), totals)
    assert (draws[[0, 5]] == 0).all()
    stacked = sample_multinomial(probs.expand(3, 6, 50), totals.expand(3, 6))
    assert stacked.shape == (3, 6, 50)
    np.testing.assert_array_equal(stacked.sum(-1), totals.expand(3, 6))


def test_multinomial_log_prob_is_the_multinomial_pmf():
    probs = torch.tensor([0.2, 0.3, 0.5])
    x = torch.tensor([[2.0, 0.0, 1.0]])
    expected = torch.distributions.Multinomial(3, probs=probs).log_prob(x)
    np.testing.assert_allclose(multinomial_log_prob(x, probs.log()), expected, rtol=1e-6)


@pytest.fixture
def module_and_tensors():
    torch.manual_seed(0)
    module = ETMModule(n_input=40, n_batch=2, n_topics=4, n_emb=8, batch_bias=True).eval()
    x = torch.poisson(torch.full((30, 40), 3.0))
    x[4] = 0  # an empty cell
    tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: torch.randint(0, 2, (30, 1))}
    return module, tensors


def test_module_sample_shapes_totals_and_seed(module_and_tensors):
    module, tensors = module_and_tensors
    totals = tensors[REGISTRY_KEYS.X_KEY].sum(-1)
    one = module.sample(tensors)
    assert one.shape == (30, 40) and one.dtype == torch.float32
    np.testing.assert_array_equal(one.sum(-1), totals)
    many = module.sample(tensors, n_samples=5)
    assert many.shape == (5, 30, 40)
    np.testing.assert_array_equal(many.sum(-1), totals.expand(5, 30))
    torch.manual_seed(7)
    a = module.sample(tensors, n_samples=2)
    torch.manual_seed(7)
    assert torch.equal(a, module.sample(tensors, n_samples=2))


def test_module_sample_follows_the_decoder(module_and_tensors):
    module, tensors = module_and_tensors
    # each draw takes its own δ: the mean of many is n · E_q[softmax(θβ + λ)]
    torch.manual_seed(0)
    draws = module.sample(tensors, n_samples=2000).mean(0)
    with torch.inference_mode():
        out = module.inference(tensors[REGISTRY_KEYS.X_KEY], n_samples=2000)
        theta = out["theta"]
        px = torch.softmax(
            module.generative(theta, tensors[REGISTRY_KEYS.BATCH_KEY])["logits"], -1
        )
    expected = px.mean(0) * tensors[REGISTRY_KEYS.X_KEY].sum(-1, keepdim=True)
    big = expected > 2
    np.testing.assert_allclose(draws[big], expected[big], rtol=0.1)
