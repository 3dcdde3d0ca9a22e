"""run_key stability: stores in use skip finished cells by run_key, so no refactor may change one.

The keys below were computed on main (94335eb) before the architecture change moved the Cell
contract into jobs/; every later change must give the same keys for the same sweep files.
"""

import hashlib

import pytest

from pipeline import spec
from tests.helpers import TINY_SWEEP


def _keys(path) -> list[str]:
    return [f"{c.label}/{c.regime.name}/{c.regime.tasks[0]}/s{c.seed}={c.run_key}" for c in spec.expand_all(spec.load_all(path))]


@pytest.mark.parametrize(
    "path, n_cells, digest",
    [("configs/quickstart.yaml", 6, "0bb107ea3caa68cc"), ("configs/nightly.yaml", 63, "b93a0f7fe887f235"), ("configs/glue.yaml", 30, "a16465f009f191d4")],
)
def test_shipped_sweeps_keep_their_run_keys(path, n_cells, digest):
    keys = _keys(path)
    assert len(keys) == n_cells
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == digest


def test_tiny_and_grid_sweeps_keep_their_run_keys(write_spec):
    assert _keys(write_spec(TINY_SWEEP)) == ["none/cs-32/arc_easy/s1=bc95156e995e801d", "lora/cs-32/arc_easy/s1=505b56a47ff55154"]
    grid = TINY_SWEEP.replace("hparams: {r: 4}", "hparams: {r: [4, 8]}")
    assert _keys(write_spec(grid)) == [
        "none/cs-32/arc_easy/s1=bc95156e995e801d",
        "lora(r=4)/cs-32/arc_easy/s1=505b56a47ff55154",
        "lora(r=8)/cs-32/arc_easy/s1=58f3c67a8bf97f6b",
    ]


def test_a_scheduler_enters_the_run_key_only_when_it_is_not_the_default(write_spec):
    """lr_scheduler came after the keys above: the default (linear), named or not, keeps them."""
    default = _keys(write_spec(TINY_SWEEP))
    assert _keys(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, lr_scheduler: linear"), "linear.yaml")) == default
    cosine = _keys(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, lr_scheduler: cosine"), "cosine.yaml"))
    constant = _keys(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, lr_scheduler: constant"), "constant.yaml"))
    assert len(set(default) | set(cosine) | set(constant)) == 3 * len(default)


def test_precision_auto_keeps_cpu_keys_and_gives_gpu_cells_their_own(write_spec):
    """precision came later too: a CPU cell's auto is fp32, out of the key (named or not); a GPU
    cell's auto is bf16, in it, so a finished CPU cell is never taken for the GPU one."""
    default = _keys(write_spec(TINY_SWEEP))
    assert _keys(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, precision: fp32"), "fp32.yaml")) == default
    gpu = _keys(write_spec(TINY_SWEEP + "resources: {gpus: 1}\n", "gpu.yaml"))
    assert not set(gpu) & set(default)
    assert _keys(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, precision: fp32") + "resources: {gpus: 1}\n", "g32.yaml")) == default
    memory = _keys(write_spec(TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, gradient_checkpointing: true"), "gc.yaml"))
    assert not set(memory) & set(default)
