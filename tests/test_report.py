"""The run report: one self-contained HTML page, checked as HTML and in a real browser.

One small pipeline run (the session's simulated cells, 5 epochs) is shared by the module;
the browser test loads its page in headless Chromium through the DevTools protocol
(``docs/_scripts/browser.py``) and skips only when no Chromium binary exists.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from scetm_mnn import _outputs, _pipeline, pl
from scetm_mnn._costs import COST_COLUMNS, PhaseCosts
from scetm_mnn._pipeline import run_pipeline
from scetm_mnn.pl import _report_sections

SECTIONS = ("run", "integration", "sweep", "topics", "training", "cost")
PHASES = ["preprocess", "correct", "train", "latent", "evaluate", "figures", "save", "report"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BROWSER = Path(__file__).resolve().parents[1] / "docs" / "_scripts" / "browser.py"


def _browser():
    """``docs/_scripts/browser.py`` as a module (registered: it defines a dataclass)."""
    if "_scetm_mnn_browser" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_scetm_mnn_browser", BROWSER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["_scetm_mnn_browser"]


class Page(HTMLParser):
    """Sections, images, tables and every URL-carrying attribute of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections, self.images, self.links, self.rows = [], [], [], []
        self.tags: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr" and attrs.get("class"):
            self.rows.append(attrs["class"])
        for key in ("src", "href", "action", "data", "poster"):
            if key in attrs:
                self.links.append(attrs[key])


@pytest.fixture(scope="module")
def run(sim_adata, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = run_pipeline(
        sim_adata,
        "batch",
        label_key="cell_type",
        out=out,
        n_top_genes=200,
        max_epochs=5,
        source_name="simulated cells",
    )
    return result, out


@pytest.fixture(scope="module")
def html(run) -> str:
    _, out = run
    return (out / "report.html").read_text(encoding="utf-8")


def test_the_run_writes_the_report_and_the_costs(run):
    result, out = run
    assert result.files["report"] == out / "report.html"
    assert list(result.costs.columns) == list(COST_COLUMNS)
    assert list(result.costs["phase"]) == PHASES
    assert (result.costs["seconds"] >= 0).all()
    rss = result.costs["peak_rss_mib"].to_numpy()
    assert np.all(rss > 50) and np.all(np.diff(rss) >= 0)  # a peak only grows
    pd.testing.assert_frame_equal(pd.read_csv(out / "costs.csv"), result.costs)
    assert plt.get_fignums() == []  # the pipeline closed every figure it drew


def test_pipeline_copies_the_counts_once(sim_adata, monkeypatch):
    """The source AnnData handed to preprocess shares the caller's counts (no copy)."""
    seen = {}

    def fake_preprocess(adata, **kwargs):
        seen["shares"] = np.shares_memory(adata.X.data, sim_adata.X.data)
        seen["copy"] = kwargs.get("copy")
        raise ValueError("stop here")

    monkeypatch.setattr(_pipeline.pp, "preprocess", fake_preprocess)
    with pytest.raises(ValueError, match="stop here"):
        run_pipeline(sim_adata, "batch")
    assert seen == {"shares": True, "copy": True}


def test_html_parses_with_every_section(html, run):
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>")
    assert page.sections == list(SECTIONS)
    for text in (
        "simulated cells",
        "600 × 200",  # cells × genes
        "batch_0",
        "type_0",  # batches and cell types with sizes
        "n_top_genes",
        "scvi-tools",  # parameters and versions
        "Batch entropy",
        "best",  # the sweep's best row
        "most enriched",  # the topic table
        "MNN corrector",
        "peak memory",
    ):
        assert text in html, text
    assert page.rows.count("best") == 1
    model = run[0].model
    assert f"{model.n_live_topics} of the model's {model.module.n_topics} topics are shown" in html
    for phase in PHASES:
        assert f"<td>{phase}</td>" in html, phase
    assert "could not be drawn" not in html


def test_every_image_is_an_embedded_png(html):
    images = Page(html).images
    assert len(images) == 5  # UMAP before and after, sweep, topics, training
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        data = base64.b64decode(src[len(prefix) :], validate=True)
        assert data.startswith(PNG_MAGIC)
        pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.05


def test_nothing_points_at_the_network_or_another_file(html):
    page = Page(html)
    assert not re.search(r"https?:", html, re.I)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 holds '/'
    assert "//" not in text  # no protocol-relative URL either
    assert {"script", "link", "iframe", "object", "embed"}.isdisjoint(page.tags)
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in page.links)
    assert "@import" not in text and "url(" not in text


def test_subsampled_report_says_so_and_stays_small(run, tmp_path):
    result, _ = run
    assert "The sweep clustered" not in (run[1] / "report.html").read_text()  # all cells
    sweep = result.sweep.copy()
    sweep.attrs.update(n_cells=300, n_obs=result.adata.n_obs)  # as leiden_sweep(subsample=300)
    path = pl.report(
        result.adata,
        result.model,
        tmp_path / "sub.html",
        batch_key="batch",
        label_key="cell_type",
        sweep=sweep,
        costs=result.costs,
        max_cells=150,
    )
    html = " ".join(path.read_text().split())
    assert "stratified subsample of 150 of the" in html
    assert "the tables use all cells, except the Leiden sweep's" in html
    assert f"The sweep clustered a stratified subsample of 300 of {result.adata.n_obs:,}" in html
    # The figures are fixed-size PNGs: the page's size does not follow the cell count.
    assert path.stat().st_size < 10 * 2**20
    assert path.stat().st_size < 2 * (run[1] / "report.html").stat().st_size


def test_the_report_reuses_the_pipelines_umap(run, tmp_path, monkeypatch):
    """One UMAP of the latent per run: umap.png's, kept in obsm, is the report's too."""
    result, _ = run
    coords = result.adata.obsm["X_scetm_mnn_umap"]
    assert coords.shape == (result.adata.n_obs, 2) and np.isfinite(coords).all()
    computed = []
    umap = sc.tl.umap

    def counted(adata, *args, **kwargs):
        computed.append(adata.n_obs)
        return umap(adata, *args, **kwargs)

    monkeypatch.setattr("scanpy.tl.umap", counted)
    pl.report(result.adata, result.model, tmp_path / "r.html", batch_key="batch")
    assert len(computed) == 1  # the uncorrected PCA's only
    adata = result.adata.copy()
    del adata.obsm["X_scetm_mnn_umap"]
    pl.report(adata, result.model, tmp_path / "r.html", batch_key="batch")
    assert len(computed) == 3  # without it, the latent's is computed too


def test_report_without_labels_groups_topics_by_cluster(run, tmp_path):
    result, _ = run
    path = pl.report(result.adata, result.model, tmp_path / "nolabels.html", batch_key="batch")
    html = path.read_text()
    page = Page(html)
    assert page.sections == list(SECTIONS)
    assert "Leiden cluster of the latent" in html and "No Leiden sweep" in html
    assert len(page.images) == 4  # no sweep figure


def test_report_shows_topic_names_and_flags_unstable_topics(run, tmp_path):
    result, _ = run
    adata, model = result.adata.copy(), result.model
    first, *rest = model.topic_names
    adata.uns["topic_annotation"] = {"labels": {first: f"{first} · beta (FDR 3e-12)"}}
    adata.uns["topic_stability"] = {
        "reproducibility": {first: 0.95, **{t: 0.2 for t in rest}},
        "stable": {first: True, **{t: False for t in rest}},
        "n_runs": 5, "min_cosine": 0.7, "min_presence": 0.8,
    }  # fmt: skip
    path = pl.report(
        adata, model, tmp_path / "named.html", batch_key="batch", label_key="cell_type"
    )
    html = path.read_text()
    assert f"{first} · beta (FDR 3e-12)" in html
    assert "Stability over 5 seeds" in html
    assert f"<strong>{len(rest)}</strong>" in html
    assert html.count('<span class="unstable">unstable</span>') == len(rest) + 1  # + the legend
    plain = pl.report(result.adata, model, tmp_path / "plain.html", batch_key="batch").read_text()
    assert "Stability over" not in plain and "unstable</span>" not in plain


def test_a_figure_that_fails_is_a_warning_and_the_page_is_still_written(
    run, tmp_path, monkeypatch, caplog
):
    result, _ = run

    def broken(*args, **kwargs):
        raise RuntimeError("no figure today")

    monkeypatch.setattr(_report_sections, "leiden_sweep", broken)
    with caplog.at_level(logging.WARNING, logger="scetm_mnn.pl"):
        path = pl.report(
            result.adata,
            result.model,
            tmp_path / "r.html",
            batch_key="batch",
            label_key="cell_type",
            sweep=result.sweep,
        )
    html = path.read_text()
    assert "could not be drawn: RuntimeError: no figure today" in html
    page = Page(html)
    assert len(page.images) == 4 and page.rows == ["best"]  # the rest, sweep table too
    assert any("sweep figure could not be drawn" in r.getMessage() for r in caplog.records)


def test_a_failing_report_never_loses_the_other_outputs(run, tmp_path, monkeypatch, caplog):
    result, _ = run

    def broken(*args, **kwargs):
        raise RuntimeError("the report broke")

    monkeypatch.setattr(_outputs.pl, "report", broken)
    costs = PhaseCosts()
    with caplog.at_level(logging.WARNING, logger="scetm_mnn._outputs"):
        files = _outputs.write_outputs(
            result, tmp_path, "batch", "cell_type", costs, report=True, source=None
        )
    assert "report" not in files and not (tmp_path / "report.html").exists()
    for name in ("leiden_sweep.csv", "umap.png", "topics.png", "model/model.pt", "costs.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert any("report could not be written" in r.getMessage() for r in caplog.records)
    assert plt.get_fignums() == []


def test_no_report(run, tmp_path):
    result, _ = run
    files = _outputs.write_outputs(
        result, tmp_path, "batch", "cell_type", PhaseCosts(), report=False, source=None
    )
    assert "report" not in files and not (tmp_path / "report.html").exists()
    assert list(pd.read_csv(files["costs"])["phase"]) == ["figures", "save"]


def test_report_rejects_missing_keys(run, tmp_path):
    result, _ = run
    with pytest.raises(KeyError, match="X_nope"):
        pl.report(
            result.adata, result.model, tmp_path / "x.html", batch_key="batch", use_rep="X_nope"
        )
    with pytest.raises(KeyError, match="donor"):
        pl.report(result.adata, result.model, tmp_path / "x.html", batch_key="donor")
    with pytest.raises(KeyError, match="costs lacks"):
        pl.report(
            result.adata,
            result.model,
            tmp_path / "x.html",
            batch_key="batch",
            costs=pd.DataFrame({"phase": ["x"]}),
        )


def test_the_browser_check_finds_errors(tmp_path):
    """The browser check itself: a page with a missing image and a network fetch fails it."""
    browser = _browser()
    if browser.find_chromium() is None:
        pytest.skip("no Chromium binary (apt-get install chromium; .ci/run installs it)")
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><img src="https://example.org/x.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    shot = browser.screenshot(bad)
    joined = " ".join(shot.errors)
    assert "ERR_FILE_NOT_FOUND" in joined and "console.error: boom" in joined
    assert "ERR_NAME_NOT_RESOLVED" in joined  # no network: names do not resolve


def test_report_in_a_real_browser(html, run, tmp_path):
    browser = _browser()
    if browser.find_chromium() is None:
        pytest.skip("no Chromium binary (apt-get install chromium; .ci/run installs it)")
    _, out = run
    shot = browser.screenshot(out / "report.html", tmp_path / "shot.png", width=1280)
    assert shot.errors == []
    page = (out / "report.html").resolve().as_uri()
    assert [r for r in shot.requests if not r.startswith("data:image/png;base64")] == [page]
    assert shot.png.startswith(PNG_MAGIC) and (tmp_path / "shot.png").exists()
    pixels = matplotlib.image.imread(io.BytesIO(shot.png), format="png")
    assert pixels.shape[:2] == (shot.height, shot.width)  # the whole page, not the window
    assert shot.width == 1280 and shot.height > 3000  # six sections and five figures
    gray = pixels[..., :3].mean(axis=2)
    assert gray.std() > 0.1  # not blank
    for band in np.array_split(gray, 6):  # ink from the top of the page to its bottom
        assert (band < 0.5).mean() > 0.002


def test_topic_extras_read_the_records_after_an_h5ad_round_trip(tmp_path):
    import anndata as ad

    adata = ad.AnnData(np.zeros((2, 2)))
    adata.uns["topic_stability"] = {
        "reproducibility": {"topic_0": 0.9, "topic_1": 0.2},
        "stable": {"topic_0": True, "topic_1": False},
        "n_runs": 5, "min_cosine": 0.7, "min_presence": 0.8,
    }  # fmt: skip
    adata.uns["topic_annotation"] = {"labels": {"topic_0": "topic 0 · beta (FDR 1e-05)"}}
    adata.write_h5ad(tmp_path / "records.h5ad")
    read = ad.read_h5ad(tmp_path / "records.h5ad")
    topics = pd.DataFrame({"topic": ["topic_0", "topic_1", "topic_2"]})
    table, context = _report_sections.topic_extras(read, topics)
    assert table["name"].tolist() == ["topic 0 · beta (FDR 1e-05)", "topic_1", "topic_2"]
    assert table["stable"].tolist() == [True, False, None]
    assert context["annotated"] and context["stability"]["n_unstable"] == 1
    _, bare = _report_sections.topic_extras(ad.AnnData(np.zeros((2, 2))), topics)
    assert bare == {"annotated": False, "stability": None}
