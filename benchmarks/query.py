"""Correcting a new donor with a fitted corrector: Baron human, leave one donor out.

For each of the four donors of the Baron human pancreas subset (``SCETM_MNN_DATA``, 2,142
cells): a :class:`scetm_mnn.pp.MNNCorrector` is fitted with its defaults on the other three
donors (2,000 HVGs chosen on them, ``pp.preprocess(..., batch_key="batch")``); the held-out
donor, normalized and log-transformed the same way and subset to those genes, is corrected
with ``transform``. Rows:

- ``uncorrected``: reference and query in the frozen PCA, neither corrected;
- ``adapter="none"``: the query through the reference network only;
- ``adapter="shift"`` / ``"affine"`` / ``"local"`` (the default): the network, then the
  query batch's adapter fitted on its MNN pairs with the corrected reference;
- ``joint fit``: ``mnn_correct`` on all four donors at once (the query is a training
  batch; what a refit would give).

Measures, in the corrected latent ``obsm["X_mnn_corrected"]`` (the frozen 50-component
PCA): ``entropy``, the kNN batch entropy (``tl.batch_entropy``, 30 neighbours, normalized
to [0, 1]) of the labels query/reference over all cells; ``label acc.``, the fraction of
query cells whose cell type is the majority among their 15 nearest reference cells;
``query pairs``, the MNN pairs between the query and the reference. Means over the four
held-out donors, and per donor.

Run: ``.venv/bin/python benchmarks/query.py [--out benchmarks/results/query.md]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from sklearn.neighbors import KNeighborsClassifier

import scetm_mnn as sm

KEY = "mnn_corrected"
LABEL_NEIGHBOURS = 15
ADAPTERS = ("none", "shift", "affine", "local")


def split(counts: ad.AnnData, donor: str) -> tuple[ad.AnnData, ad.AnnData]:
    """The preprocessed reference (other donors) and the log-normalized query over its genes."""
    is_query = (counts.obs["batch"] == donor).to_numpy()
    reference = sm.pp.preprocess(counts[~is_query], n_top_genes=2000, batch_key="batch", copy=True)
    query = counts[is_query].copy()
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    return reference, query[:, reference.var_names].copy()


def scores(reference: ad.AnnData, query: ad.AnnData, z_ref, z_query) -> dict[str, float]:
    both = ad.AnnData(
        obs=pd.DataFrame({"set": ["reference"] * len(z_ref) + ["query"] * len(z_query)}),
        obsm={"z": np.vstack([z_ref, z_query]).astype(np.float32)},
    )
    knn = KNeighborsClassifier(n_neighbors=LABEL_NEIGHBOURS).fit(
        z_ref, reference.obs["cell_type"].to_numpy()
    )
    accuracy = float((knn.predict(z_query) == query.obs["cell_type"].to_numpy()).mean())
    return {
        "entropy": sm.tl.batch_entropy(both, "z", "set", n_neighbors=30),
        "label acc.": accuracy,
    }


def run_donor(counts: ad.AnnData, donor: str, with_joint: bool = True) -> list[dict]:
    reference, query = split(counts, donor)
    rows = []
    tic = time.perf_counter()
    corrector = sm.pp.MNNCorrector("batch")
    corrector.fit_transform(reference)
    fit_s = time.perf_counter() - tic
    with torch.inference_mode():
        z_ref = corrector.space_(torch.from_numpy(reference.X.toarray())).numpy()
        z_query = corrector.space_(torch.from_numpy(np.asarray(query.X.toarray()))).numpy()
    rows.append({"method": "uncorrected", **scores(reference, query, z_ref, z_query)})
    for adapter in ADAPTERS:
        tic = time.perf_counter()
        out = corrector.transform(query, copy=True, adapter=adapter)
        seconds = time.perf_counter() - tic
        rows.append(
            {
                "method": f'adapter="{adapter}"',
                **scores(reference, query, reference.obsm["X_" + KEY], out.obsm["X_" + KEY]),
                "query pairs": out.uns[KEY]["n_pairs"],
                "seconds": seconds,
            }
        )
    if with_joint:
        rows.append(joint_fit(reference, query, donor))
    for row in rows:
        row.update(donor=donor, n_query=int(query.n_obs), fit_seconds=fit_s)
    return rows


def joint_fit(reference: ad.AnnData, query: ad.AnnData, donor: str) -> dict:
    """The scores of ``mnn_correct`` on reference and query together."""
    joint = ad.concat([reference, query], merge="same")
    joint.obs_names_make_unique()
    tic = time.perf_counter()
    sm.pp.mnn_correct(joint, "batch")
    is_query = (joint.obs["batch"] == donor).to_numpy()
    z = joint.obsm["X_" + KEY]
    return {
        "method": "joint fit",
        **scores(reference, query, z[~is_query], z[is_query]),
        "query pairs": int(
            sum(v for k, v in joint.uns[KEY]["pair_counts"].items() if donor in k.split("|"))
        ),
        "seconds": time.perf_counter() - tic,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-joint", action="store_true", help="skip the joint fits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = sm.datasets.baron_pancreas("human")
    table = pd.DataFrame(
        [
            row
            for donor in sorted(counts.obs["batch"].unique())
            for row in run_donor(counts, donor, not args.no_joint)
        ]
    )
    order = ["uncorrected", *(f'adapter="{a}"' for a in ADAPTERS)]
    order += [] if args.no_joint else ["joint fit"]
    mean = (
        table.groupby("method", sort=False)[["entropy", "label acc.", "query pairs", "seconds"]]
        .mean()
        .loc[order]
    )
    per_donor = table.pivot(index="method", columns="donor", values=["entropy", "label acc."])
    text = "\n\n".join(
        [
            __doc__.split("\n\n")[0],
            "Means over the four held-out donors:",
            mean.round(3).to_markdown(),
            "Per held-out donor:",
            per_donor.loc[order].round(3).to_markdown(),
            f"Fit on three donors: {table['fit_seconds'].mean():.1f} s on average.",
        ]
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
