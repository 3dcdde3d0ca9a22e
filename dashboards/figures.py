"""Figures for the sweep report, each a function from a tidy frame to an inline SVG string.

SVG keeps report.html self-contained (no CDN, no image files) and sharp at any zoom.
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")  # no display on workers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "attention.output.dense")
LAYER = re.compile(r"\.(\d+)\.")


def to_svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog so it inlines in HTML
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF licence links: not content


def pareto(summary: pd.DataFrame) -> str:
    """Average accuracy vs trainable parameters per backbone, the Pareto front drawn as a step line.

    `summary`: backbone, regime, method, trainable_params, avg (mean over seeds of the task average).
    """
    groups = list(summary.groupby(["backbone", "regime"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, ((backbone, regime), block) in zip(axes[0], groups):
        x = block.trainable_params.clip(lower=1)  # zero-shot sits at 1 on the log axis
        ax.scatter(x, 100 * block.avg, zorder=3)
        for xi, yi, label in zip(x, 100 * block.avg, block.method):
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = block.assign(x=x).sort_values("x")
        front = front[front.avg >= front.avg.cummax()]
        ax.step(front.x, 100 * front.avg, where="post", color="tab:red", alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set(title=f"{backbone} · {regime}", xlabel="trainable parameters (log)", ylabel="average accuracy (%)")
        ax.legend(loc="lower right", fontsize=8)
    return to_svg(fig)


def efficiency(summary: pd.DataFrame, baseline: str) -> str:
    """tokens/s and peak memory of each trained method relative to the baseline (1.0 = same)."""
    trained = summary.dropna(subset=["tokens_per_s"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 + 0.35 * max(len(trained), 2)))
    for ax, column, label in ((axes[0], "tokens_per_s", "tokens/s"), (axes[1], "peak_mem_mb", "peak memory")):
        rows = []
        for (backbone, regime), block in trained.groupby(["backbone", "regime"]):
            base = block.loc[block.method == baseline, column]
            if base.empty:
                continue
            rows += [(f"{m} · {backbone}", v / base.iloc[0]) for m, v in zip(block.method, block[column])]
        if rows:
            names, ratios = zip(*rows)
            ax.barh(names, ratios)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set(title=f"{label} ÷ {baseline}", xlabel="ratio")
    return to_svg(fig)


def loss_curves(history: pd.DataFrame) -> str:
    """Training loss per step, mean over seeds with the seed range shaded, one line per method."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, runs in history.groupby("method"):
        by_step = runs.groupby("step").loss
        mean = by_step.mean()
        ax.plot(mean.index, mean.values, label=method)
        ax.fill_between(mean.index, by_step.min().values, by_step.max().values, alpha=0.15)
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title="training loss")
    ax.legend(fontsize=8)
    return to_svg(fig)


def module_kind(name: str) -> str:
    return "attention" if any(key in name for key in ATTENTION) else "mlp"


def layer_index(name: str) -> int:
    match = LAYER.search(name)
    return int(match.group(1)) if match else -1


def stable_rank_by_depth(modules: pd.DataFrame) -> str:
    """Stable rank of ΔW by layer, attention vs MLP, mean over modules and seeds (LR-LoRA paper, Fig. 2)."""
    frame = modules.assign(kind=modules.module.map(module_kind), layer=modules.module.map(layer_index))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("attention", "mlp")):
        for method, rows in frame[frame.kind == kind].groupby("method"):
            depth = rows.groupby("layer").stable_rank.mean()
            ax.plot(depth.index, depth.values, marker="o", ms=3, label=method)
        ax.set(title=f"{kind} modules", xlabel="layer", ylabel="stable rank ‖ΔW‖F² / ‖ΔW‖2²")
        ax.legend(fontsize=8)
    return to_svg(fig)


def spectra(modules: pd.DataFrame) -> str:
    """Singular values of ΔW normalised by the largest, averaged over modules, per method."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, rows in modules.groupby("method"):
        curves = [np.asarray(s, dtype=float) / max(s[0], 1e-30) for s in rows.spectrum if len(s) and s[0] > 0]
        if not curves:
            continue
        width = min(len(c) for c in curves)
        ax.semilogy(np.arange(1, width + 1), np.mean([c[:width] for c in curves], axis=0), label=method)
    ax.set(xlabel="index", ylabel="σ_i / σ_1", title="singular-value spectra of ΔW")
    ax.legend(fontsize=8)
    return to_svg(fig)


def phi_curves(curves: pd.DataFrame) -> str:
    """Learned transfer functions φ(z) of lr_lora* at early / middle / final steps (one module each)."""
    methods = sorted(curves.method.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for _, row in curves[curves.method == method].sort_values("step").iterrows():
            ax.plot(row.z, row.phi, label=f"step {row.step} ({row.stage})")
        ax.set(title=f"{method}: φ of {curves[curves.method == method].module.iloc[0]}", xlabel="z", ylabel="φ(z)")
        ax.legend(fontsize=8)
    return to_svg(fig)


def shift_maps(maps: pd.DataFrame) -> str:
    """The learned shift modulation S of lora_shift, one module per method variant."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.5 * len(maps), 4), squeeze=False)
    for ax, (_, row) in zip(axes[0], maps.iterrows()):
        image = ax.imshow(np.asarray(row.shift_map), aspect="auto", cmap="coolwarm")
        fig.colorbar(image, ax=ax)
        ax.set(title=f"{row.method}: S of {row.module}", xlabel="input j", ylabel="output i")
    return to_svg(fig)
