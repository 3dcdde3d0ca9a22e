"""report.html for a sweep: the comparison table and the figures, in one self-contained file.

Everything is read back from MLflow (results, per-item scores, loss curves, the diagnostics
each cell logged under `analysis/`), so a report can be rebuilt for any sweep at any time.
No CDN, no external files: figures are inline SVG, styles inline.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone

import pandas as pd

from dashboards import figures
from pipeline import stats, tables, track

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
figure{margin:1rem 0 2rem} figcaption{font-size:.85rem;color:#555}
svg{max-width:100%;height:auto}
"""


def run_data(uri: str, results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """What the figures draw beyond the results: loss history, module diagnostics, φ curves."""
    runs = results[["run_id", "method", "seed"]].drop_duplicates()
    history, modules, curves = [], [], []
    for run in runs.itertuples(index=False):
        history += [{"run_id": run.run_id, "method": run.method, "seed": run.seed, "step": s, "loss": v} for s, v in track.metric_history(uri, run.run_id, "train/loss")]
        for stage in ("early", "middle", "final"):
            text = track.read_artifact_text(uri, run.run_id, f"analysis/{stage}.json")
            if text is None:
                continue
            record = json.loads(text)
            for entry in record["modules"]:
                base = {"run_id": run.run_id, "method": run.method, "seed": run.seed, "module": entry["module"], "step": record["step"], "stage": stage}
                if stage == "final":
                    modules.append({**base, **{k: entry.get(k) for k in ("stable_rank", "stable_rank_centered", "spectrum", "shift_map")}})
                if "phi" in entry:
                    curves.append({**base, "z": entry["phi"]["z"], "phi": entry["phi"]["phi"]})
    return {
        "history": pd.DataFrame(history),
        "modules": pd.DataFrame(modules),
        "curves": pd.DataFrame(curves),
    }


def method_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per backbone × regime × method: mean task-average score over seeds and the cost columns."""
    values = stats.seed_values(results)
    per_seed = values.groupby(["backbone", "regime", "method", "seed"]).value.mean() / 100
    avg = per_seed.groupby(["backbone", "regime", "method"]).mean().rename("avg")
    cost = results.groupby(["backbone", "regime", "method"])[["trainable_params", "tokens_per_s", "peak_mem_mb"]].mean()
    return cost.join(avg).reset_index()


def build(uri: str, sweep_name: str, results: pd.DataFrame, tables_html: str, data: dict[str, pd.DataFrame], baseline: str | None = None) -> str:
    """The whole report as one HTML string: `tables_html` (the comparison report, already
    rendered by `pipeline.compare`) and the figures (`data` from `run_data`)."""
    sections = [f"<h1>peftbench · {html.escape(sweep_name)}</h1>", f"<p>Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {results.run_key.nunique()} finished cells.</p>"]
    sections.append(tables_html)
    summary = method_summary(results)
    chosen = tables.resolve_baseline(sorted(summary.method.unique()), baseline)
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


def log_cell_pages(uri: str, results: pd.DataFrame, items: pd.DataFrame | None, data: dict[str, pd.DataFrame]) -> None:
    """Each cell's page as `report.html` on its own child run."""
    for run_id, rows in results.groupby("run_id"):
        own = {name: frame[frame.run_id == run_id] if len(frame) else frame for name, frame in data.items()}
        own_items = items[items.run_key == rows.run_key.iloc[0]] if items is not None and len(items) else pd.DataFrame()
        track.log_text(uri, run_id, cell_page(rows, own, own_items), "report.html")


def _figure(title: str, svg: str, caption: str) -> str:
    return f"<h2>{html.escape(title)}</h2><figure class='figure'>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def log(uri: str, parent_run_id: str, sweep_name: str, results: pd.DataFrame, items: pd.DataFrame | None, tables_html: str, baseline: str | None = None) -> None:
    """Attach the sweep's report to its parent run and each cell's page to its child run,
    both as `report.html`."""
    data = run_data(uri, results)
    track.log_text(uri, parent_run_id, build(uri, sweep_name, results, tables_html, data, baseline), "report.html")
    log_cell_pages(uri, results, items, data)


def _page(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>peftbench · {html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
