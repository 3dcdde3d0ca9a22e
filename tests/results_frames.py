"""Results and items frames built by hand, in the layout pipeline.compare produces from MLflow.

`sweep_frames` draws per-item 0/1 results for each method from a per-method accuracy, so a test
can say "lr_lora is 10 points better" or "lora_copy is lora under another name" and check that
the statistics see it.
"""

import numpy as np
import pandas as pd

from pipeline.published import EFFICIENCY_COLUMNS, RESULT_COLUMNS


def sweep_frames(
    accuracy: dict[str, float],
    tasks=("arc_easy", "piqa", "boolq", "openbookqa"),
    seeds=(42, 123, 456),
    n_items: int = 400,
    backbone: str = "smollm2-135m",
    regime: str = "cs-1k",
    same_as: dict[str, str] | None = None,
    efficiency: dict[str, tuple[float, float, float]] | None = None,
    rng_seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, items). `same_as={"lora_copy": "lora"}` copies lora's runs under a new name.

    Item difficulty is shared across methods (as on a real test set), so paired tests have
    the correlation they would have on real runs.
    """
    rng = np.random.default_rng(rng_seed)
    same_as = same_as or {}
    efficiency = efficiency or {}
    results, items = [], []
    for task in tasks:
        difficulty = rng.normal(0, 1.5, n_items)
        for seed in seeds:
            noise = rng.normal(0, 0.5, n_items)
            drawn = {}
            for method, acc in accuracy.items():
                logit = np.log(acc / (1 - acc)) - difficulty + noise + rng.normal(0, 0.7, n_items)
                drawn[method] = (rng.random(n_items) < 1 / (1 + np.exp(-logit))).astype(int)
            for copy, original in same_as.items():
                drawn[copy] = drawn[original]
            for method, correct in drawn.items():
                run_key = f"{method}-{backbone}-{regime}-{seed}"
                params, tok_s, mem = efficiency.get(method, (np.nan, np.nan, np.nan))
                results.append(
                    dict(
                        run_key=run_key, sweep="synthetic", method=method, backbone=backbone, regime=regime,
                        seed=seed, task=task, metric="acc", value=correct.mean(), trainable_params=params,
                        trainable_pct=params / 135e6 * 100, tokens_per_s=tok_s, peak_mem_mb=mem,
                    )
                )
                items.append(
                    pd.DataFrame(
                        dict(run_key=run_key, method=method, backbone=backbone, regime=regime, seed=seed,
                             task=task, doc_id=np.arange(n_items), acc=correct)
                    )
                )
    return pd.DataFrame(results, columns=RESULT_COLUMNS + EFFICIENCY_COLUMNS), pd.concat(items, ignore_index=True)
