"""The encoder's forms: hidden layers with a linear path, a linear encoder, a conformal one."""

import pytest
import torch
from scvi import REGISTRY_KEYS

from scetm_mnn.module import CORRECTED_KEY, ConformalLinear, ETMModule


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, x)[torch.triu_indices(len(x), len(x), 1).unbind()]


def _encode(module: ETMModule, latent: torch.Tensor) -> torch.Tensor:
    module.eval()
    counts = torch.poisson(torch.full((len(latent), module.n_input), 2.0))
    tensors = {REGISTRY_KEYS.X_KEY: counts, CORRECTED_KEY: latent}
    with torch.no_grad():
        return module.inference(**module._get_inference_input(tensors))["qz"].loc


def test_conformal_linear_keeps_distance_ratios_after_training_steps():
    torch.manual_seed(0)
    layer = ConformalLinear(6, 9)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    x = torch.randn(40, 6)
    for _ in range(5):  # the parametrisation keeps Q orthonormal through the updates
        optimizer.zero_grad()
        layer(x).pow(3).sum().backward()
        optimizer.step()
    ratio = _pairwise(layer(x)) / _pairwise(x)
    assert ratio.std() / ratio.mean() < 1e-5
    assert not torch.allclose(layer.log_scale, torch.zeros(()))  # the scale is learnt


def test_conformal_linear_refuses_fewer_outputs_than_inputs():
    with pytest.raises(ValueError, match="cannot keep distances; use at least 6 topics"):
        ConformalLinear(6, 5)


def test_conformal_encoder_keeps_the_latent_geometry():
    torch.manual_seed(0)
    module = ETMModule(30, n_topics=12, n_emb=4, hidden_sizes=(), n_encoder_input=8,
                       encoder_skip=True, conformal_encoder=True)  # fmt: skip
    latent = torch.randn(50, 8)
    mu = _encode(module, latent)
    ratio = _pairwise(mu) / _pairwise(latent)
    assert mu.shape == (50, 12)
    assert ratio.std() / ratio.mean() < 1e-5
    assert len(module.encoder) == 0 and module.mu is None


def test_conformal_encoder_with_a_hidden_layer_adds_to_the_isometry():
    torch.manual_seed(0)
    module = ETMModule(30, n_topics=12, n_emb=4, hidden_sizes=(5,), n_encoder_input=8,
                       encoder_skip=True, conformal_encoder=True)  # fmt: skip
    latent = torch.randn(50, 8)
    with torch.no_grad():
        module.mu.weight.zero_()
    iso = _encode(module, latent)
    ratio = _pairwise(iso) / _pairwise(latent)
    assert ratio.std() / ratio.mean() < 1e-5  # the hidden path's map is zero: the isometry
    with torch.no_grad():
        module.mu.weight.normal_()
    assert not torch.allclose(_encode(module, latent), iso)


def test_linear_encoder_is_affine_in_its_input():
    torch.manual_seed(0)
    module = ETMModule(30, n_topics=6, n_emb=4, hidden_sizes=(), n_encoder_input=8,
                       encoder_skip=True)  # fmt: skip
    a, b = torch.randn(10, 8), torch.randn(10, 8)
    mu_a, mu_b, mu_mid = (_encode(module, x) for x in (a, b, (a + b) / 2))
    torch.testing.assert_close(mu_mid, (mu_a + mu_b) / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_sizes": ()}, "hidden_sizes=\\(\\) leaves the encoder nothing"),
        ({"conformal_encoder": True}, "conformal_encoder=True .* set encoder_skip=True"),
    ],
)
def test_encoder_forms_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ETMModule(30, n_topics=6, n_emb=4, **kwargs)
