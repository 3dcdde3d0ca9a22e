"""report.html for a sweep: the comparison table and the figures, in one self-contained file.

Pure rendering: frames in, HTML out. `pipeline.compare` reads everything back from MLflow
(results, per-item scores, loss curves, the diagnostics each cell logged under `analysis/`)
and logs the pages, so a report can be rebuilt for any sweep at any time.
No CDN, no external files: figures are inline SVG, styles inline.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone

import pandas as pd

from dashboards import figures

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
figure{margin:1rem 0 2rem} figcaption{font-size:.85rem;color:#555}
svg{max-width:100%;height:auto}
"""


def build(sweep_name: str, n_cells: int, tables_html: str, summary: pd.DataFrame, baseline: str, data: dict[str, pd.DataFrame]) -> str:
    """The whole report as one HTML string: `tables_html` (the comparison report, already
    rendered), the accuracy and cost figures of `summary` (per backbone × regime × method: avg,
    trainable_params, tokens_per_s, peak_mem_mb) against `baseline`, and the training figures
    of `data` (history, modules, curves)."""
    sections = [f"<h1>peftbench · {html.escape(sweep_name)}</h1>", f"<p>Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {n_cells} finished cells.</p>"]
    sections.append(tables_html)
    chosen = baseline
    figures_to_show = [
        ("Accuracy vs trainable parameters", figures.pareto(summary), "Average accuracy over the scored tasks (mean over seeds) against trainable parameters; zero-shot sits at 1. The red step line is the Pareto front."),
    ]
    if summary.tokens_per_s.notna().any():
        figures_to_show.append(("Efficiency", figures.efficiency(summary, chosen), f"Training tokens/s and peak memory of each method ÷ {chosen}'s, measured in the same sweep."))
    figures_to_show += training_figures(data)
    sections += [_figure(*f) for f in figures_to_show]
    return _page(sweep_name, sections)


def training_figures(data: dict[str, pd.DataFrame]) -> list[tuple[str, str, str]]:
    """(title, svg, caption) of the loss curves and the adapters' diagnostics in `data`."""
    shown = []
    if len(data["history"]):
        shown.append(("Training loss", figures.loss_curves(data["history"]), "Loss on the answer tokens per optimizer step; line: mean over seeds, band: min–max."))
    modules = data["modules"]
    if len(modules) and modules.stable_rank.notna().any():
        shown.append(("Stable rank by depth", figures.stable_rank_by_depth(modules), "‖ΔW‖F² / ‖ΔW‖2² of the learned update per layer, attention vs MLP modules (LR-LoRA paper, Figure 2)."))
        shown.append(("Singular-value spectra", figures.spectra(modules), "Singular values of ΔW divided by the largest, averaged over the adapted modules."))
    curves = data["curves"]
    if len(curves):
        one_module = curves.groupby("method").module.agg(lambda m: sorted(m.unique())[len(m.unique()) // 2])
        chosen_curves = curves[curves.module == curves.method.map(one_module)].drop_duplicates(["method", "stage"])
        shown.append(("Learned φ curves", figures.phi_curves(chosen_curves), "φ(z) of the LR-LoRA transfer function in one mid-depth module at the first, middle and last step (first seed)."))
    if len(modules) and modules.shift_map.notna().any():
        maps = modules.dropna(subset=["shift_map"]).drop_duplicates("method")
        shown.append(("Shift maps", figures.shift_maps(maps), "The learned LoRA-SHIFT modulation S (pooled to 32×32) of the first adapted module."))
    return shown


def cell_page(rows: pd.DataFrame, data: dict[str, pd.DataFrame], items: pd.DataFrame) -> str:
    """One cell's own page: its scores (`rows`: its results-frame rows), its training figures
    and every scored item."""
    run = rows.iloc[0]
    title = f"{run.method} · {run.backbone} · {run.regime} · seed {run.seed}"
    scores = rows.pivot_table(index="task", columns="metric", values="value")
    sections = [f"<h1>{html.escape(title)}</h1>", "<h2>Scores</h2>", scores.to_html(border=0, float_format="{:.4f}".format)]
    sections += [_figure(*f) for f in training_figures(data)]
    if len(items):
        sections += ["<h2>Scored items</h2>", items.drop(columns=["run_key", "method", "backbone", "regime", "seed"], errors="ignore").to_html(index=False, border=0)]
    return _page(title, sections)


def _figure(title: str, svg: str, caption: str) -> str:
    return f"<h2>{html.escape(title)}</h2><figure class='figure'>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _page(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>peftbench · {html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
