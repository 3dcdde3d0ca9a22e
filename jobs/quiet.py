"""Quiet by default: library chatter a user cannot act on stays off the terminal; `--verbose` shows it.

The driver makes the choice (`configure(verbose)`); it travels to the cell's Ray workers in the
environment (PEFTBENCH_VERBOSE), and a quiet driver does not forward their output at all (Ray's
`log_to_driver`), so what reaches the terminal is the progress bar, the tables and real errors:
a failed cell's error is printed by the driver, and its traceback is in its MLflow run
(`error.txt`) and in Ray's worker logs.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "PEFTBENCH_VERBOSE"
LOGGERS = ("mlflow", "alembic", "ray", "deepspeed", "DeepSpeed", "datasets", "bitsandbytes", "transformers", "peft",
           "accelerate", "lm-eval", "lm_eval", "torch", "urllib3", "filelock", "matplotlib")
# The modules whose warnings (FutureWarning, UserWarning, ...) are library news, not the user's.
LIBRARY_MODULES = r"(transformers|torch|deepspeed|peft|lm_eval|datasets|evaluate|mlflow|ray|accelerate|bitsandbytes|pydantic|sklearn|statsmodels|scipy)(\.|$)"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose_: bool | None = None) -> None:
    """Silence the libraries' info and warnings unless verbose; None: what the driver chose."""
    if verbose_ is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_ else "0"
    if verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # mlflow sets its loggers' level when imported
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=LIBRARY_MODULES)
