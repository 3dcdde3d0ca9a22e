"""The comparison table and its renderers, on hand-built sweeps and on the papers' own tables."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import tables
from pipeline.published import load_results_csv
from tests.helpers import sweep_frames

CLAIMS = Path(__file__).resolve().parents[2] / "shared" / "claims"
needs_claims = pytest.mark.skipif(not CLAIMS.is_dir(), reason=f"published tables not found at {CLAIMS}")

EFFICIENCY = {"lora": (1.0e6, 1000.0, 500.0), "lr_lora": (1.01e6, 700.0, 800.0), "ia3": (1.0e5, 1100.0, 450.0)}


@pytest.fixture(scope="module")
def sweep():
    return sweep_frames({"lora": 0.55, "lr_lora": 0.68, "ia3": 0.45}, same_as={"lora_copy": "lora"}, efficiency=EFFICIENCY)


@pytest.fixture(scope="module")
def table(sweep):
    results, items = sweep
    return tables.comparison_table(results, items)


def cells(table) -> pd.DataFrame:
    return table.blocks[0].cells.set_index(["row", "column"])


def test_lora_is_the_default_baseline_and_a_named_one_wins():
    assert tables.default_baseline(["none", "ia3", "lora"]) == "lora"
    assert tables.default_baseline(["none", "ia3"]) == "none"
    results, _ = sweep_frames({"lora": 0.5, "ia3": 0.6}, tasks=("piqa",), seeds=(1, 2), n_items=50)
    assert tables.comparison_table(results, baseline="ia3").baseline == "ia3"


def test_cells_are_mean_and_std_over_seeds_with_n(sweep, table):
    results, _ = sweep
    arc = results[(results["method"] == "lr_lora") & (results["task"] == "arc_easy")]["value"] * 100
    cell = cells(table).loc[("lr_lora", "arc_easy")]
    assert cell["mean"] == pytest.approx(arc.mean()) and cell["std"] == pytest.approx(arc.std(ddof=1))
    assert cell["n"] == 3
    per_seed = results[results["method"] == "lr_lora"].groupby("seed")["value"].mean() * 100
    assert cells(table).loc[("lr_lora", tables.AVERAGE), "mean"] == pytest.approx(per_seed.mean())


def test_the_better_method_is_bold_and_marked_up_the_worse_down_the_copy_unmarked(table):
    c = cells(table)
    assert c.loc[("lr_lora", tables.AVERAGE), "best"] and c.loc[("lr_lora", tables.AVERAGE), "mark"] == tables.UP
    assert c.loc[("ia3", tables.AVERAGE), "mark"] == tables.DOWN
    assert (c.loc["lora_copy", "mark"] == "").all()
    assert (c.loc["lora", "mark"] == "").all()  # the baseline is not tested against itself


def test_cost_is_relative_to_the_baseline(table):
    cost = table.blocks[0].cost
    assert cost.loc["lr_lora", "tokens_per_s"] == pytest.approx(0.7)
    assert cost.loc["lr_lora", "peak_mem_mb"] == pytest.approx(1.6)
    assert cost.loc["lora", "tokens_per_s"] == pytest.approx(1.0)


def test_rows_show_only_the_hyperparameters_that_differ():
    results, _ = sweep_frames({"lora": 0.5, "lr_lora": 0.6}, tasks=("piqa",), seeds=(1,), n_items=20)
    hparams = {"lora": {"r": 8, "lora_alpha": 16}, "lr_lora": {"r": 8, "lora_alpha": 16, "grid": 50}}
    results["hparams"] = results["method"].map(hparams)
    assert set(tables.row_labels(results)) == {"lora", "lr_lora"}  # one value each: nothing to tell apart
    results.loc[results["method"] == "lora", "hparams"] = '{"r": 16, "lora_alpha": 16}'  # as MLflow gives it
    assert set(tables.row_labels(results)) == {"lora(r=16)", "lr_lora(r=8)"}


def test_markdown_html_and_latex_carry_the_same_cells(table):
    md, page, tex = (tables.render(table, f) for f in ("md", "html", "tex"))
    best = cells(table).loc[("lr_lora", tables.AVERAGE)]
    shown = f"{best['mean']:.2f} ± {best['std']:.2f} (n=3)"
    assert f"**{shown}{tables.UP}**" in md
    assert f"<b>{shown}{tables.UP}</b>" in page
    in_tex = shown.replace("±", r"$\pm$")
    assert rf"\textbf{{{in_tex}$\uparrow$}}" in tex
    assert r"lr\_lora" in tex and "lr_lora" not in tex.replace(r"lr\_lora", "")
    assert "Holm–Bonferroni" in md and "Holm–Bonferroni" in page


def test_csv_is_tidy_with_each_p_value_named(table):
    tidy = pd.read_csv(io.StringIO(tables.render(table, "csv")))
    tested = tidy[tidy["row"] == "lr_lora"]
    assert set(tested["column"]) == {"arc_easy", "piqa", "boolq", "openbookqa", tables.AVERAGE}
    assert tested["test_name"].notna().all() and tested["correction"].str.startswith("Holm–Bonferroni").all()
    assert (tidy["baseline"] == "lora").all()


def test_an_unknown_baseline_is_an_error_that_names_the_methods(sweep):
    results, _ = sweep
    with pytest.raises(ValueError, match="baseline 'loar' is not a method of these results .*lr_lora"):
        tables.comparison_table(results, baseline="loar")
    results = results.assign(hparams=results["method"].map(lambda m: {"r": 8 if m == "lora" else 16}))
    assert tables.resolve_baseline(list(tables.row_labels(results).unique()), "lora") == "lora(r=8)"


def test_latex_escapes_what_latex_would_choke_on():
    results, _ = sweep_frames({"lora": 0.5, "lr_lora": 0.6}, tasks=("piqa",), seeds=(1,), n_items=20)
    results["method"] = results["method"].replace({"lr_lora": "lr_lora 50%"})
    tex = tables.render(tables.comparison_table(results), "tex")
    assert r"lr\_lora 50\%" in tex and "50%" not in tex


def test_unknown_format_is_an_error_that_names_the_choices(table):
    with pytest.raises(ValueError, match="md, html, tex, csv"):
        tables.render(table, "xlsx")


def test_a_results_frame_saved_as_csv_loads_back(tmp_path, sweep):
    results, _ = sweep
    path = tmp_path / "results.csv"
    results.drop(columns=["tokens_per_s"]).to_csv(path, index=False)
    loaded = load_results_csv(path)
    assert loaded["tokens_per_s"].isna().all()
    assert np.allclose(loaded["value"], results["value"])


def test_a_file_that_is_neither_layout_is_rejected_with_what_is_missing(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("method,score\nlora,1\n")
    with pytest.raises(ValueError, match="missing columns: backbone"):
        load_results_csv(path)


@needs_claims
def test_published_per_task_table_averages_to_the_papers_average():
    published = load_results_csv(CLAIMS / "lr_lora_table6_qwen2_per_task.csv")
    block = next(b for b in tables.comparison_table(published).blocks if b.regime == "15k")
    computed = block.cells.set_index(["row", "column"]).loc[("lr_lora-32", tables.AVERAGE), "mean"]
    assert computed == pytest.approx(55.88, abs=0.02)  # the paper's own avg column
    assert tables.AVERAGE in block.columns and "avg" not in block.columns


@needs_claims
def test_published_averages_render_with_the_papers_std_marked_as_published():
    published = load_results_csv(CLAIMS / "lr_lora_table1_commonsense.csv")
    md = tables.render_report(published, fmt="md")
    assert "55.88 ± 0.12†" in md and "52.34 ± 0.14†" in md
    glue = load_results_csv(CLAIMS / "lr_lora_table2_glue.csv")
    cola = glue[(glue["task"] == "cola") & (glue["method"] == "lr_lora") & (glue["backbone"] == "roberta-base")]
    assert cola["metric"].item() == "mcc" and cola["value"].item() == pytest.approx(0.632)
    assert "vera(r=1024)" in tables.render(tables.comparison_table(glue), "md")


def test_the_report_carries_the_table_its_tests_and_the_claims(sweep):
    results, items = sweep
    claims_file = Path(__file__).resolve().parents[1] / "configs" / "claims" / "lr_lora.yaml"
    report = tables.render_report(results, items, "md", claims=claims_file)
    for section in ("### smollm2-135m · cs-1k", "## Average gain over lora", "## Per-task tests against lora", "## Claims"):
        assert section in report
    assert "seeds and items random" in report and "seed 42: McNemar p=" in report and "MDE (points)" in report
    assert "not tested at the claim's scale" in report.split("## Claims")[1]  # smollm2-135m is not the claims' backbone
    assert tables.render_report(results, items, "csv") == tables.render(tables.comparison_table(results, items), "csv")


def test_aso_is_reported_per_task_only_when_asked():
    results, _ = sweep_frames({"lora": 0.5, "lr_lora": 0.7}, tasks=("piqa",), n_items=200)
    assert tables.comparison_table(results).task_tests["aso"].isna().all()
    eps = tables.comparison_table(results, with_aso=True).task_tests["aso"].item()
    assert eps < 0.2  # lr_lora almost stochastically dominates lora


def test_a_method_missing_a_task_gets_no_average_and_an_empty_frame_is_an_error():
    results, _ = sweep_frames({"lora": 0.5, "ia3": 0.6}, tasks=("piqa", "boolq"), seeds=(1, 2), n_items=50)
    results = results[~((results["method"] == "ia3") & (results["task"] == "boolq"))]
    block = tables.comparison_table(results).blocks[0]
    assert set(block.cells[block.cells["row"] == "ia3"]["column"]) == {"piqa"}
    md_row = next(line for line in tables.render(tables.comparison_table(results), "md").splitlines() if line.startswith("| ia3"))
    assert [cell.strip() for cell in md_row.split("|")[2:5]][1:] == ["", ""]  # boolq and Average left blank
    with pytest.raises(ValueError, match="no finished runs"):
        tables.comparison_table(results.iloc[:0])
