"""The learned update's diagnostics as JSON, logged to the cell's run for the dashboards.

`adapters.analysis` computes them (stable rank, spectrum, φ curve, shift map per adapted
module); this turns them into small JSON records: spectra cut to their leading values and shift
maps pooled to a coarse grid, so a 30-layer model's record stays a few hundred KB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapters import analysis

SPECTRUM_VALUES = 64
SHIFT_MAP_GRID = 32


def record(model: torch.nn.Module, step: int, stage: str, curves_only: bool = False) -> dict:
    """{step, stage, modules: [...]} for every LoRA-shaped adapted module of `model`.

    `curves_only` computes just the φ curves and shift maps (cheap) for the early/middle snapshots.
    """
    modules = []
    for report in analysis.analyze(model, curves_only, top=SPECTRUM_VALUES):
        entry: dict = {"module": report.name, "shape": list(report.shape)}
        if not curves_only:
            entry["stable_rank"] = report.stable_rank
            entry["stable_rank_centered"] = report.stable_rank_centered
            entry["spectrum"] = report.spectrum[:SPECTRUM_VALUES].tolist()
        if report.phi_curve is not None:
            z, phi = report.phi_curve
            entry["phi"] = {"z": z.tolist(), "phi": phi.tolist()}
        if report.shift_map is not None:
            grid = F.adaptive_avg_pool2d(report.shift_map[None, None].float(), SHIFT_MAP_GRID)[0, 0]
            entry["shift_map"] = grid.tolist()
        modules.append(entry)
    return {"step": step, "stage": stage, "modules": modules}
