import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from scetm_mnn.module import (
    ANCHOR_KEY,
    CORRECTED_KEY,
    MNN_PAIRS_KEY,
    ETMModule,
    mnn_loss,
    proportions_nll,
)


def _tensors(n_cells=32, n_genes=50, n_batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 5)
    batch = torch.randint(0, n_batch, (n_cells, 1), generator=g)
    return {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: batch}


def test_shapes_and_finite_loss():
    torch.manual_seed(0)
    module = ETMModule(50, n_batch=2, n_topics=7, n_emb=11, batch_bias=True)
    inf, gen, loss = module(_tensors())
    assert inf["qz"].loc.shape == (32, 7)
    assert torch.allclose(inf["theta"].sum(-1), torch.ones(32))
    assert gen["logits"].shape == (32, 50)
    assert loss.reconstruction_loss["reconstruction_loss"].shape == (32,)
    assert loss.kl_local["kl_local"].shape == (32,)
    assert torch.isfinite(loss.loss)
    assert module.topic_gene_logits().shape == (7, 50)


def test_log_sigma_is_clamped():
    module = ETMModule(10, n_topics=3, n_emb=4)
    with torch.no_grad():
        module.log_sigma.bias.fill_(100.0)
    module.eval()
    out = module.inference(torch.ones(4, 10))
    assert torch.allclose(out["qz"].scale, torch.full((4, 3), float(np.exp(10.0))))


def test_reconstruction_is_multinomial_nll_of_proportions():
    module = ETMModule(5, n_topics=2, n_emb=3)
    module.eval()
    tensors = {REGISTRY_KEYS.X_KEY: torch.tensor([[1.0, 0, 3, 0, 0]])}
    _inf, gen, loss = module(tensors)
    p = torch.tensor([[0.25, 0, 0.75, 0, 0]])
    expected = -(p * torch.log_softmax(gen["logits"], -1)).sum(-1)
    assert torch.allclose(loss.reconstruction_loss["reconstruction_loss"], expected)


def test_fused_nll_has_the_composed_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 40, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.poisson(torch.rand(2, 6, 40, generator=g, dtype=torch.float64) * 3)
    x[0, 1] = 0  # an empty cell: no loss, no gradient
    p = x / x.sum(-1, keepdim=True).clamp(min=1e-8)
    weights = torch.rand(2, 6, generator=g, dtype=torch.float64)
    fused = proportions_nll(logits, p)
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), logits)
    composed = -(p * torch.log_softmax(logits, -1)).sum(-1)
    (grad_composed,) = torch.autograd.grad((composed * weights).sum(), logits)
    torch.testing.assert_close(fused, composed)
    torch.testing.assert_close(grad_fused, grad_composed)
    assert fused[0, 1] == 0 and torch.all(grad_fused[0, 1] == 0)
    assert torch.autograd.gradcheck(lambda lg: proportions_nll(lg, p), (logits,))
    with pytest.raises(ValueError, match="same shape"):
        proportions_nll(logits, p[..., :-1])


def test_fused_nll_runs_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=g).bfloat16().requires_grad_()
    p = torch.softmax(torch.randn(4, 30, generator=g), -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = proportions_nll(logits, p)
    # The proportions are not rounded to bf16, nor is the loss (3 significant digits).
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, proportions_nll(logits.detach().float(), p))
    loss.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_corrected_layer_feeds_the_encoder_and_counts_stay_the_target():
    module = ETMModule(3, n_topics=2, n_emb=2, hidden_sizes=(4,))
    module.eval()
    seen = []
    module.encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    corrected = torch.tensor([[0.5, -0.1, 2.0]])
    tensors = {REGISTRY_KEYS.X_KEY: torch.tensor([[1.0, 3.0, 0.0]]), CORRECTED_KEY: corrected}
    inf, gen, loss = module(tensors)
    assert torch.equal(seen[0], corrected)  # read as it is
    p = torch.tensor([[0.25, 0.75, 0.0]])
    assert torch.allclose(inf["p"], p)
    expected = -(p * torch.log_softmax(gen["logits"], -1)).sum(-1)
    assert torch.allclose(loss.reconstruction_loss["reconstruction_loss"], expected)


def test_partners_enter_only_the_mnn_term():
    torch.manual_seed(0)
    module = ETMModule(50, n_topics=4, n_emb=5)
    module.eval()
    tensors = _tensors(n_cells=6)
    anchor = torch.tensor([True, True, True, True, False, False])
    with_partners = {**tensors, ANCHOR_KEY: anchor, MNN_PAIRS_KEY: torch.tensor([[0, 4]])}
    only = {k: v[:4] for k, v in tensors.items()}
    with torch.no_grad():  # σ ≈ 0: δ = μ, so both passes see the same θ
        module.log_sigma.weight.zero_()
        module.log_sigma.bias.fill_(-10.0)
    _, gen, loss = module(with_partners)
    _, _, plain = module(only)
    assert gen["logits"].shape == (4, 50)  # partners are not decoded
    assert loss.n_obs_minibatch == 4
    # without an MNN weight the loss is that of the sampled cells alone
    torch.testing.assert_close(loss.loss, plain.loss, rtol=1e-4, atol=1e-4)


def test_batch_bias_shifts_logits_per_batch():
    module = ETMModule(4, n_batch=2, n_topics=2, n_emb=2, batch_bias=True)
    with torch.no_grad():
        module.batch_bias[1] = torch.tensor([5.0, 0, 0, 0])
    theta = torch.full((2, 2), 0.5)
    out = module.generative(theta, torch.tensor([[0], [1]]))["logits"]
    assert out[1, 0] > out[0, 0]
    beta = module.topic_gene_logits()
    torch.testing.assert_close(out, theta @ beta + module.batch_bias[[0, 1]])
    # with a sample axis, (S, B, K): each draw gets its cell's bias
    thetas = torch.softmax(torch.randn(3, 2, 2), -1)
    drawn = module.generative(thetas, torch.tensor([[1], [0]]))["logits"]
    torch.testing.assert_close(drawn, thetas @ beta + module.batch_bias[[1, 0]])
    with pytest.raises(ValueError, match="batch index"):
        module.generative(theta, None)


def test_no_batch_bias_means_no_parameter():
    assert ETMModule(4, n_batch=3).batch_bias is None
    with pytest.raises(ValueError, match="n_batch"):
        ETMModule(4, n_batch=0, batch_bias=True)


def test_fixed_gene_embeddings_are_a_buffer():
    fixed = np.eye(3, 6, dtype=np.float32)
    module = ETMModule(6, n_topics=2, n_emb=4, fixed_gene_embeddings=fixed)
    assert "rho_fixed" in dict(module.named_buffers())
    assert "rho_fixed" in module.state_dict()
    assert module.alpha.shape == (2, 7)
    assert module.gene_embeddings.shape == (7, 6)
    with pytest.raises(ValueError, match="shape"):
        ETMModule(6, fixed_gene_embeddings=np.ones((2, 5)))


def test_mnn_term_is_the_module_s_mnn_loss():
    torch.manual_seed(0)
    module = ETMModule(50, n_topics=4, n_emb=5)
    module.eval()
    tensors = _tensors()
    torch.manual_seed(1)
    inf, _gen, base = module(tensors)
    tensors[MNN_PAIRS_KEY] = torch.tensor([[0, 1], [2, 3]])
    torch.manual_seed(1)
    _, _, with_mnn = module(tensors, loss_kwargs={"mnn_weight": 2.0})
    mu = inf["qz"].loc
    assert module.mnn_loss == "local"  # the default form
    expected = mnn_loss(mu, tensors[MNN_PAIRS_KEY], "local", tensors[REGISTRY_KEYS.BATCH_KEY])
    assert torch.allclose(with_mnn.extra_metrics["mnn_loss"], expected, atol=1e-5)
    assert torch.allclose(with_mnn.loss - base.loss, 2.0 * expected, atol=1e-5)
    torch.manual_seed(1)
    assert torch.allclose(module(tensors)[2].loss, base.loss)  # weight 0: no term


@pytest.mark.parametrize("kind", ["local", "normalized"])
def test_mnn_loss_cannot_be_lowered_by_shrinking_the_latent(kind):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 8, generator=g)
    batch = (torch.arange(64) >= 32).long()
    pairs = torch.stack([torch.arange(0, 32), torch.arange(32, 64)], dim=1)
    base = mnn_loss(mu, pairs, kind, batch)
    assert base > 0
    for scale in (1e-3, 0.1, 10.0):
        torch.testing.assert_close(
            mnn_loss(scale * mu, pairs, kind, batch), base, rtol=1e-4, atol=0
        )
    # the original Euclidean term falls with the scale: the collapse it invited
    assert mnn_loss(0.1 * mu, pairs, "euclidean") < 0.2 * mnn_loss(mu, pairs, "euclidean")
    # identical pairs score 0
    same = torch.cat([mu[:32], mu[:32]])
    assert float(mnn_loss(same, pairs, kind, batch)) == 0.0


def test_normalized_mnn_loss_is_about_one_for_random_pairs():
    mu = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    pairs = torch.stack([torch.arange(0, 1000), torch.arange(1000, 2000)], dim=1)
    assert 0.9 < float(mnn_loss(mu, pairs, "normalized")) < 1.1


def test_local_mnn_loss_ignores_pairs_that_already_share_a_neighbourhood():
    # two batches, each a tight cluster at 0 and another at 10; batch 1 slightly shifted
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0]] * 10 + [[10.0, 0.0]] * 10)
    a = centres + 0.5 * torch.randn(20, 2, generator=g)
    b = centres + 0.5 * torch.randn(20, 2, generator=g) + torch.tensor([0.1, 0.0])
    mu = torch.cat([a, b])
    batch = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    mixed = torch.tensor([[0, 20], [15, 35]])  # partners inside each other's neighbourhood
    assert float(mnn_loss(mu, mixed, "local", batch)) == 0.0
    assert float(mnn_loss(mu, mixed, "normalized")) > 0  # still pulls them
    apart = torch.tensor([[0, 35]])  # a cross-cluster pair is pulled
    assert float(mnn_loss(mu, apart, "local", batch)) > 0
    with pytest.raises(ValueError, match="needs the batch"):
        mnn_loss(mu, mixed, "local")
    with pytest.raises(ValueError, match="mnn_loss must be one of"):
        mnn_loss(mu, mixed, "cosine")


def test_sample_keeps_library_size():
    torch.manual_seed(0)
    module = ETMModule(50, n_batch=2, n_topics=3, n_emb=4, batch_bias=True)
    tensors = _tensors(n_cells=5)
    draws = module.sample(tensors, n_samples=2)
    assert draws.shape == (2, 5, 50)
    lib = tensors[REGISTRY_KEYS.X_KEY].sum(-1).clamp(min=1)
    assert torch.equal(draws.sum(-1)[0], lib)


def test_unknown_constructor_argument():
    with pytest.raises(TypeError, match="nonsense"):
        ETMModule(5, nonsense=1)


@pytest.mark.parametrize("encoder_input", ["proportions", "log"])
def test_encoder_input_is_proportions_or_their_log(encoder_input):
    module = ETMModule(3, n_topics=2, n_emb=2, hidden_sizes=(4,), encoder_input=encoder_input)
    module.eval()
    seen = []
    module.encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    module.inference(torch.tensor([[1.0, 3.0, 0.0]]))
    p = torch.tensor([[0.25, 0.75, 0.0]])
    expected = torch.log1p(1e4 * p) if encoder_input == "log" else p
    assert torch.allclose(seen[0], expected)


def test_unknown_encoder_input_and_mnn_loss():
    with pytest.raises(ValueError, match="encoder_input must be 'proportions' or 'log'"):
        ETMModule(3, encoder_input="counts")
    with pytest.raises(ValueError, match="mnn_loss must be one of"):
        ETMModule(3, mnn_loss="cosine")


def test_encoder_skip_gives_the_heads_a_linear_path_from_the_input():
    torch.manual_seed(0)
    latent = torch.randn(32, 6)
    tensors = {**_tensors(), CORRECTED_KEY: latent}
    plain = ETMModule(50, n_batch=2, n_topics=4, n_emb=8, n_encoder_input=6)
    skip = ETMModule(50, n_batch=2, n_topics=4, n_emb=8, n_encoder_input=6, encoder_skip=True)
    assert plain.mu.in_features == 128 and skip.mu.in_features == 128 + 6
    assert skip.log_sigma.in_features == 128 + 6
    skip.eval()
    inf, _, loss = skip(tensors)
    assert torch.allclose(inf["theta"].sum(-1), torch.ones(32)) and torch.isfinite(loss.loss)
    # with the hidden layer's weights silenced, μ is the linear map of the input alone
    with torch.no_grad():
        skip.mu.weight[:, :128] = 0
    mu = skip.inference(None, corrected=latent)["qz"].loc
    expected = latent @ skip.mu.weight[:, 128:].T + skip.mu.bias
    assert torch.allclose(mu, expected, atol=1e-6)
