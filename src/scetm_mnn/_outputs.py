"""What a run writes into its output folder: the sweep, the figures, the model, the report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib.pyplot as plt

from . import pl
from ._atomic import write_text
from ._costs import PhaseCosts
from ._h5ad import write_in_memory_parts
from ._result import CORRECTED_KEY, LATENT_KEY, TOPICS_KEY, PipelineResult
from .pl import FIGURE_MAX_CELLS
from .pl._report import REPORT_MAX_CELLS
from .pl._umap import umap_coordinates, umap_key
from .tl._leiden import sweep_subsample

logger = logging.getLogger(__name__)


def write_outputs(
    result: PipelineResult,
    out: Path,
    batch_key: str,
    label_key: str | None,
    costs: PhaseCosts,
    report: bool,
    source: str | None,
    max_cells: int | None = FIGURE_MAX_CELLS,
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if result.sweep is not None:
        files["metrics"] = out / "leiden_sweep.csv"
        write_text(files["metrics"], result.sweep.to_csv(index=False))
        files["table"] = out / "leiden_sweep.md"
        note = sweep_subsample(result.sweep)
        table = result.sweep.round(3).to_markdown(index=False) + "\n"
        write_text(files["table"], table if note is None else f"Leiden on a {note}.\n\n{table}")
    with costs.phase("figures"):
        files["umap"] = out / "umap.png"
        # One UMAP of the latent, for this figure and for the report (which reuses it).
        result.adata.obsm[umap_key(LATENT_KEY)] = umap_coordinates(
            result.adata, LATENT_KEY, batch_key, label_key, max_cells=max_cells
        )
        fig = pl.integration_umap(
            result.adata,
            LATENT_KEY,
            batch_key,
            label_key,
            save=files["umap"],
            umap_key=umap_key(LATENT_KEY),
            max_cells=max_cells,
            show=False,
        )
        plt.close(fig)
        files["topics"] = out / "topics.png"
        fig = pl.topic_heatmap(
            result.model,
            label_key=label_key or batch_key,
            theta_key=TOPICS_KEY,
            save=files["topics"],
            show=False,
        )
        plt.close(fig)
    with costs.phase("save"):
        files["model"] = out / "model"
        result.model.save(files["model"], overwrite=True)
        if result.adata.isbacked:  # the run's data file: the results beside its matrices
            write_in_memory_parts(result.adata)
            files["data"] = Path(result.adata.filename)
    result.costs = costs.frame()
    if report:
        costs.start("report")
        tic = time.perf_counter()
        try:
            files["report"] = pl.report(
                result.adata,
                result.model,
                out / "report.html",
                batch_key=batch_key,
                label_key=label_key,
                sweep=result.sweep,
                use_rep=LATENT_KEY,
                theta_key=TOPICS_KEY,
                corrector_key=CORRECTED_KEY,
                costs=result.costs,
                params=result.params,
                source=source,
                max_cells=min(max_cells or REPORT_MAX_CELLS, REPORT_MAX_CELLS),
                random_state=result.params["random_state"],
            )
        except Exception as err:  # the report must never lose the run's other outputs
            logger.warning("The report could not be written: %s", err, exc_info=True)
        finally:
            plt.close("all")
        costs.add("report", time.perf_counter() - tic)
        result.costs = costs.frame()
    files["costs"] = out / "costs.csv"
    write_text(files["costs"], result.costs.to_csv(index=False))
    logger.info("Wrote %s", ", ".join(str(p) for p in files.values()))
    return files
