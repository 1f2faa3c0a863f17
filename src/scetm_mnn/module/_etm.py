"""The embedded topic model (scETM) as a scvi-tools module (pure torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal, kl_divergence

from .._distributed import StandardNormal
from ._conformal import ConformalLinear
from ._likelihood import proportions_nll, sample_multinomial
from ._mnn_loss import MNN_LOSSES, SCALE_INVARIANT_LOSSES, MNNLoss, mnn_loss

MNN_PAIRS_KEY = "mnn_pairs"
"""Key of the minibatch tensor holding MNN pairs as row indices into the minibatch (P × 2)."""
CORRECTED_KEY = "corrected"
"""Registry and minibatch key of the corrected expression that the encoder reads."""
ANCHOR_KEY = "anchor"
"""Key of the minibatch mask of sampled cells (``False`` for MNN partners drawn in).

Only the sampled cells enter the likelihood and the KL term, so that every training cell
weighs the same however many MNN pairs it has; partners enter only the MNN term.
"""

LOG_SIGMA_BOUND = 10.0
LOG_SCALE = 1e4
"""Target sum of the log-normalized encoder input (``encoder_input="log"``)."""


def _encoder_layers(n_input: int, hidden_sizes: Sequence[int], dropout_rate: float) -> nn.Module:
    """Linear → ReLU → BatchNorm → Dropout per hidden layer, as in scETM."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip([n_input, *hidden_sizes[:-1]], hidden_sizes):
        layers += [
            nn.Linear(n_in, n_out),
            nn.ReLU(),
            nn.BatchNorm1d(n_out),
            nn.Dropout(dropout_rate),
        ]
    return nn.Sequential(*layers)


class ETMModule(BaseModuleClass):
    """Embedded topic model with an optional batch bias on the decoder logits.

    The encoder maps expression to ``q(δ) = N(μ, σ)``; topic mixtures are
    ``θ = softmax(δ)``. The decoder is linear: ``log p̂ = log_softmax(θ · α · ρ + λ_s)``,
    with topic embeddings ``α`` (K × L), gene embeddings ``ρ`` (L × G, optionally stacked
    with fixed rows) and per-batch gene biases ``λ_s``. The decoder always reconstructs the
    observed counts, as scETM does: the loss is the multinomial negative log-likelihood of
    each cell's count proportions.

    The encoder reads either the counts (``encoder_input``) or, when the minibatch holds
    ``tensors["corrected"]`` (a batch-corrected log-expression layer, e.g. from
    :func:`scetm_mnn.pp.mnn_correct`), that layer as it is. The corrected layer is only ever
    an input: it is not count data, so it is never a likelihood target.

    Parameters
    ----------
    n_input
        Number of genes G.
    n_batch
        Number of batches; the batch bias needs at least one.
    n_topics
        Number of topics K.
    n_emb
        Dimension L of the trainable gene and topic embeddings.
    hidden_sizes
        Widths of the encoder's hidden layers.
    dropout_rate
        Dropout after each encoder hidden layer.
    batch_bias
        Add the per-batch gene bias ``λ`` to the decoder logits.
    fixed_gene_embeddings
        Optional ``(P, G)`` array of fixed gene-embedding rows (e.g. a pathway × gene
        membership matrix) stacked under the trainable ``ρ``; stored as a buffer, so it is
        saved with the model but never trained.
    encoder_input
        What the encoder sees of the counts when there is no corrected layer:
        ``"proportions"`` (scETM: counts / library size) or ``"log"``
        (``log1p(10⁴ · proportions)``, the usual log-normalized expression).
    mnn_loss
        Form of the MNN term (:func:`~scetm_mnn.module.mnn_loss`): ``"local"`` (the
        default) or ``"normalized"``, both scale-invariant, or ``"euclidean"`` (the
        original term, which collapses the topic space; kept for ablations).
    n_encoder_input
        Width of what the encoder reads when it is not the ``n_input`` genes: the
        dimensions of a corrected latent space (``tensors["corrected"]``). ``None``:
        ``n_input``.
    encoder_skip
        Let the heads of ``μ`` and ``log σ`` read the encoder's input next to its last
        hidden layer (a linear path from the input to ``δ``, beside the nonlinear one).
        Meant for a low-dimensional input such as the corrector's latent, whose geometry
        the linear path carries into ``δ``. With ``hidden_sizes=()`` the encoder is that
        linear path alone.
    conformal_encoder
        Make the linear path (``encoder_skip=True``) to ``μ`` a scaled isometry
        (:class:`~scetm_mnn.module.ConformalLinear`). With ``hidden_sizes=()`` the
        encoder is that map alone, so ``μ`` keeps every distance ratio, and so every kNN
        graph, of the corrector's latent; with hidden layers, they add a learnt map to it.
    topic_prior
        Optional ``(S, G)`` offsets added to the logits ``β`` of the first ``S`` topics
        (guided topics: a gene set's members get a positive offset). A buffer, saved with
        the module and never trained; ``α · ρ`` learns around it.

    Examples
    --------
    >>> import torch
    >>> from scetm_mnn.module import ETMModule
    >>> module = ETMModule(n_input=30, n_batch=2, n_topics=4, n_emb=8, batch_bias=True)
    >>> x = torch.poisson(torch.full((5, 30), 2.0))
    >>> out = module.inference(x)
    >>> out["theta"].shape, bool(torch.allclose(out["theta"].sum(-1), torch.ones(5)))
    (torch.Size([5, 4]), True)
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_topics: int = 50,
        n_emb: int = 400,
        hidden_sizes: Sequence[int] = (128,),
        dropout_rate: float = 0.1,
        batch_bias: bool = False,
        fixed_gene_embeddings: np.ndarray | torch.Tensor | None = None,
        encoder_input: Literal["proportions", "log"] = "proportions",
        mnn_loss: MNNLoss = "local",
        n_encoder_input: int | None = None,
        encoder_skip: bool = False,
        conformal_encoder: bool = False,
        topic_prior: np.ndarray | torch.Tensor | None = None,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            # scvi-tools passes n_labels / covariate counts; the ETM uses none of them.
            kwargs.pop("n_labels", None)
            kwargs.pop("n_continuous_cov", None)
            kwargs.pop("n_cats_per_cov", None)
            if kwargs:
                raise TypeError(f"Unexpected arguments for ETMModule: {sorted(kwargs)}")
        if batch_bias and n_batch < 1:
            raise ValueError("batch_bias=True needs n_batch >= 1.")
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if not hidden_sizes and not encoder_skip:
            raise ValueError(
                "hidden_sizes=() leaves the encoder nothing to read its input through; give "
                "it a layer, e.g. hidden_sizes=(128,), or set encoder_skip=True for a linear "
                "encoder."
            )
        if encoder_input not in ("proportions", "log"):
            raise ValueError(
                f"encoder_input must be 'proportions' or 'log', not {encoder_input!r}."
            )
        if mnn_loss not in MNN_LOSSES:
            raise ValueError(f"mnn_loss must be one of {MNN_LOSSES}, not {mnn_loss!r}.")
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_topics = n_topics
        self.n_emb = n_emb
        self.use_batch_bias = batch_bias
        self.encoder_input = encoder_input
        self.mnn_loss = mnn_loss

        self.n_encoder_input = n_input if n_encoder_input is None else int(n_encoder_input)
        self.encoder = _encoder_layers(self.n_encoder_input, hidden_sizes, dropout_rate)
        self.encoder_skip = bool(encoder_skip)
        # hidden_sizes=() with the skip: a linear encoder, μ and log σ affine in the input
        n_hidden = hidden_sizes[-1] if hidden_sizes else 0
        n_head = n_hidden + (self.n_encoder_input if self.encoder_skip else 0)
        if conformal_encoder and not self.encoder_skip:
            raise ValueError(
                "conformal_encoder=True makes the linear path a scaled isometry; it needs "
                "that path: set encoder_skip=True."
            )
        # conformal: μ = s·Q·input + b (+ a linear map of the hidden layer, if any)
        self.mu_skip = (
            ConformalLinear(self.n_encoder_input, n_topics) if conformal_encoder else None
        )
        if self.mu_skip is None:
            self.mu = nn.Linear(n_head, n_topics)
        else:
            self.mu = nn.Linear(n_hidden, n_topics, bias=False) if n_hidden else None
        self.log_sigma = nn.Linear(n_head, n_topics)
        self.noise = StandardNormal()  # ε of δ = μ + σ ε (no parameters)

        if fixed_gene_embeddings is None:
            fixed = torch.zeros(0, n_input)
        else:
            fixed = torch.as_tensor(np.asarray(fixed_gene_embeddings), dtype=torch.float32)
            if fixed.ndim != 2 or fixed.shape[1] != n_input:
                raise ValueError(
                    f"fixed_gene_embeddings must have shape (n_rows, {n_input}), "
                    f"got {tuple(fixed.shape)}."
                )
        self.register_buffer("rho_fixed", fixed)
        n_rows = n_emb + fixed.shape[0]
        # Small init keeps the initial logits near zero, so the softmax starts flat.
        self.rho = nn.Parameter(torch.randn(n_emb, n_input) * 0.1)
        self.alpha = nn.Parameter(torch.randn(n_topics, n_rows) * 0.1)
        self.batch_bias = nn.Parameter(torch.zeros(n_batch, n_input)) if batch_bias else None
        prior = None  # a None buffer is not in the state, so older saved states still load
        if topic_prior is not None:
            prior = torch.as_tensor(np.asarray(topic_prior), dtype=torch.float32)
            if prior.ndim != 2 or prior.shape[1] != n_input or prior.shape[0] >= n_topics:
                raise ValueError(
                    f"topic_prior must have shape (n_guided < {n_topics}, {n_input}), "
                    f"got {tuple(prior.shape)}."
                )
        self.register_buffer("topic_prior", prior)

    @property
    def conformal_encoder(self) -> bool:
        """Whether the linear path to ``μ`` is a scaled isometry (``conformal_encoder``)."""
        return self.mu_skip is not None

    @property
    def keeps_latent_geometry(self) -> bool:
        """Whether ``μ`` is a scaled isometry of the encoder's input (conformal, linear).

        Every scale-invariant function of ``μ``'s distances, such as the ``"local"`` and
        ``"normalized"`` MNN terms, is then constant in the encoder's parameters.
        """
        return self.mu_skip is not None and self.mu is None

    @property
    def mnn_term_is_constant(self) -> bool:
        """Whether the MNN term cannot change the encoder.

        So it is for a scale-invariant form (``"local"``, ``"normalized"``) under a conformal
        linear encoder (``keeps_latent_geometry``).
        """
        return self.keeps_latent_geometry and self.mnn_loss in SCALE_INVARIANT_LOSSES

    @property
    def n_guided(self) -> int:
        """How many of the first topics a prior guides (``topic_prior``'s rows)."""
        return 0 if self.topic_prior is None else int(self.topic_prior.shape[0])

    # ------------------------------------------------------------------ parameters
    @property
    def gene_embeddings(self) -> torch.Tensor:
        """The trainable gene embeddings ``ρ`` stacked over the fixed rows, (L + P) × G."""
        return torch.cat([self.rho, self.rho_fixed], dim=0)

    def topic_gene_logits(self) -> torch.Tensor:
        """``β = α · ρ`` (plus ``topic_prior`` on the guided topics): topic × gene logits."""
        beta = self.alpha @ self.gene_embeddings
        if self.topic_prior is None:
            return beta
        n = self.topic_prior.shape[0]
        return torch.cat([beta[:n] + self.topic_prior, beta[n:]], dim=0)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """Counts as per-cell proportions (counts / library size)."""
        return x / x.sum(dim=-1, keepdim=True).clamp(min=1e-8)

    # ------------------------------------------------------------------ scvi interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {"x": tensors.get(REGISTRY_KEYS.X_KEY), "corrected": tensors.get(CORRECTED_KEY)}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict, **kwargs
    ) -> dict:
        theta = inference_outputs["theta"]
        batch_index = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        anchor = tensors.get(ANCHOR_KEY)
        if anchor is not None:  # decode only the sampled cells, not the MNN partners
            theta = theta[..., anchor, :]
            batch_index = None if batch_index is None else batch_index[anchor]
        return {"theta": theta, "batch_index": batch_index}

    @auto_move_data
    def inference(
        self, x: torch.Tensor | None, corrected: torch.Tensor | None = None, n_samples: int = 1
    ) -> dict:
        """Encode expression into ``q(δ)``; sample ``δ`` and return ``θ = softmax(δ)``.

        ``x`` are counts; ``corrected``, when given, is what the encoder reads instead, and
        ``x`` may then be ``None`` (only the proportions ``p`` the loss reads need it).
        """
        if x is None and corrected is None:
            raise ValueError("inference needs the counts x, or the corrected input to encode.")
        p = None if x is None else self.normalize(x)
        if corrected is not None:
            reads = corrected
        else:
            reads = torch.log1p(LOG_SCALE * p) if self.encoder_input == "log" else p
        hidden = self.encoder(reads) if len(self.encoder) else None
        if hidden is None:  # a linear encoder (hidden_sizes=(), with the skip)
            h = reads
        else:
            h = torch.cat([hidden, reads], dim=-1) if self.encoder_skip else hidden
        if self.mu_skip is None:
            mu = self.mu(h)
        else:  # conformal: s·Q·input + b, plus a learnt map of the hidden layer, if any
            mu = self.mu_skip(reads)
            if self.mu is not None:
                mu = mu + self.mu(hidden)
        log_sigma = self.log_sigma(h).clamp(-LOG_SIGMA_BOUND, LOG_SIGMA_BOUND)
        qz = Normal(mu, log_sigma.exp())
        # ε from a layer, so that data-parallel training can share the draws (_distributed)
        delta = mu + self.noise(mu) * qz.scale if n_samples == 1 else qz.rsample((n_samples,))
        return {"qz": qz, "z": delta, "theta": F.softmax(delta, dim=-1), "p": p}

    @auto_move_data
    def generative(self, theta: torch.Tensor, batch_index: torch.Tensor | None = None) -> dict:
        """Decode topic mixtures into per-gene logits, ``θ · α · ρ + λ_s``.

        ``log_softmax`` of the logits gives the per-gene log-probabilities ``log p̂``. The
        training loss never forms them (:func:`~scetm_mnn.module.proportions_nll`).
        """
        beta = self.topic_gene_logits()
        if self.batch_bias is None:
            return {"logits": theta @ beta}
        if batch_index is None:
            raise ValueError("The batch bias needs the batch index of each cell.")
        # One product of [θ, one-hot(s)] with [β; λ]: the bias costs a few more columns of
        # the decoder's product, not a product and a sum of its own (nor index_put's scatter
        # in the backward).
        one_hot = F.one_hot(batch_index.reshape(-1).long(), self.n_batch).to(theta.dtype)
        design = torch.cat([theta, one_hot.expand(*theta.shape[:-1], self.n_batch)], dim=-1)
        return {"logits": design @ torch.cat([beta, self.batch_bias], dim=0)}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float | torch.Tensor = 1.0,
        mnn_weight: float = 0.0,
    ) -> LossOutput:
        """Multinomial NLL of the count proportions + ``kl_weight`` · KL (+ MNN term).

        The likelihood and KL terms are averaged over the sampled cells only
        (``tensors["anchor"]``); MNN partners drawn into the minibatch enter only the MNN
        term, ``mnn_weight`` · :func:`~scetm_mnn.module.mnn_loss` of the posterior means
        ``μ`` of the pairs in ``tensors["mnn_pairs"]``.
        """
        qz = inference_outputs["qz"]
        p = inference_outputs["p"]
        loc, scale = qz.loc, qz.scale
        anchor = tensors.get(ANCHOR_KEY)
        if anchor is not None:
            p, loc, scale = p[anchor], loc[anchor], scale[anchor]
        reconstruction = proportions_nll(generative_outputs["logits"], p)
        kl = kl_divergence(
            Normal(loc, scale), Normal(torch.zeros_like(loc), torch.ones_like(scale))
        )
        kl = kl.sum(dim=-1)
        loss = torch.mean(reconstruction + kl_weight * kl)
        extra = {}
        pairs = tensors.get(MNN_PAIRS_KEY)
        if pairs is not None and pairs.numel() and mnn_weight > 0:
            term = mnn_loss(qz.loc, pairs, self.mnn_loss, tensors.get(REGISTRY_KEYS.BATCH_KEY))
            loss = loss + mnn_weight * term
            extra["mnn_loss"] = term.detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl,
            extra_metrics=extra,
        )

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Posterior predictive counts: ``δ ~ q(δ | x)``, then multinomial counts of each library.

        Each of the ``n_samples`` draws takes its own ``δ``, and its counts sum to the total
        of the cell's registered counts (0 for an empty cell). All cells are drawn at once
        (``sample_multinomial`` in ``scetm_mnn.module._likelihood``), not cell by cell.

        Returns a tensor of shape ``(n_samples, n_cells, G)`` (or ``(n_cells, G)`` when
        ``n_samples == 1``).
        """
        inference_outputs = self.inference(
            **self._get_inference_input(tensors), n_samples=n_samples
        )
        logits = self.generative(**self._get_generative_input(tensors, inference_outputs))[
            "logits"
        ]
        totals = tensors[REGISTRY_KEYS.X_KEY].to(logits.device).sum(dim=-1).round()
        return sample_multinomial(F.softmax(logits, dim=-1), totals.expand(logits.shape[:-1]))
