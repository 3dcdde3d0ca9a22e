"""Sweep files: expansion into cells, run_key stability, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import spec
from pipeline.__main__ import main
from tests.helpers import TINY_SWEEP


def test_expansion_is_the_full_product(write_spec):
    sweep = spec.load(write_spec(TINY_SWEEP.replace("seeds: [1]", "seeds: [1, 2, 3]")))
    cells = spec.expand(sweep)
    assert len(cells) == 1 * 2 * 1 * 3  # backbones × methods × regimes × seeds
    assert {(c.label, c.seed) for c in cells} == {(m, s) for m in ("none", "lora") for s in (1, 2, 3)}
    assert len({c.run_key for c in cells}) == len(cells)


def test_run_key_is_stable_and_tracks_what_changes_the_result(write_spec):
    first = spec.expand(spec.load(write_spec(TINY_SWEEP)))
    again = spec.expand(spec.load(write_spec(TINY_SWEEP, "again.yaml")))
    assert [c.run_key for c in first] == [c.run_key for c in again]

    other_rank = spec.expand(spec.load(write_spec(TINY_SWEEP.replace("{r: 4}", "{r: 8}"), "r8.yaml")))
    assert first[0].run_key == other_rank[0].run_key  # `none` is untouched
    assert first[1].run_key != other_rank[1].run_key  # lora's rank changed

    renamed = spec.expand(spec.load(write_spec(TINY_SWEEP.replace("name: tiny", "name: other") + "resources: {cpus: 2}\n", "o.yaml")))
    assert [c.run_key for c in first] == [c.run_key for c in renamed]  # where and under which sweep: same result


def test_method_training_overrides_apply_to_that_method_only(write_spec):
    text = TINY_SWEEP.replace("hparams: {r: 4}", "hparams: {r: 4}\n    train: {lr: 5.0e-2}")
    none, lora = spec.expand(spec.load(write_spec(text)))
    assert (none.train.lr, lora.train.lr) == (1e-3, 5e-2)


def test_a_list_in_hparams_is_a_grid_with_labels_naming_what_varies(write_spec):
    text = TINY_SWEEP.replace("{r: 4}", "{r: [4, 8], lora_alpha: [16], target_modules: [[q_proj, v_proj]]}")
    cells = spec.expand(spec.load(write_spec(text)))
    assert [c.label for c in cells] == ["none", "lora(r=4)", "lora(r=8)"]
    assert cells[1].hparams == {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert len({c.run_key for c in cells}) == 3


def test_backbone_overrides_sit_between_sweep_and_method(write_spec):
    text = TINY_SWEEP.replace(
        "backbones: [tiny-llama]", "backbones: [{name: tiny-llama, train: {lr: 2.0e-3, max_steps: 3}, resources: {cpus: 2, processes: 1}}]"
    ).replace("hparams: {r: 4}", "hparams: {r: 4}\n    train: {lr: 5.0e-2}")
    none, lora = spec.expand(spec.load(write_spec(text)))
    assert (none.train.lr, lora.train.lr, none.train.max_steps) == (2e-3, 5e-2, 3)
    assert none.resources.cpus == 2 and none.backbone == "tiny-llama"


def test_checkpointing_and_retries_do_not_change_the_run_key(write_spec):
    plain = spec.expand(spec.load(write_spec(TINY_SWEEP)))
    tuned = spec.expand(spec.load(write_spec(TINY_SWEEP + "checkpoint_every: 2\nmax_retries: 3\nmax_concurrent: 1\n", "t.yaml")))
    assert [c.run_key for c in plain] == [c.run_key for c in tuned] and tuned[0].checkpoint_every == 2


BAD = {
    "malformed YAML": ("name: [unclosed", "malformed YAML"),
    "unknown key": (TINY_SWEEP + "colour: blue\n", "colour: Extra inputs are not permitted"),
    "unknown method": (TINY_SWEEP.replace("name: lora", "name: lorax"), "unknown method 'lorax'"),
    "unknown hyperparameter": (TINY_SWEEP.replace("{r: 4}", "{rank: 4}"), "has no hyperparameter 'rank'"),
    "non-positive lr": (TINY_SWEEP.replace("lr: 1.0e-3", "lr: 0"), "train.lr: Input should be greater than 0"),
    "non-positive steps": (TINY_SWEEP.replace("max_steps: 6", "max_steps: -1"), "train.max_steps"),
    "unknown scheduler": (TINY_SWEEP.replace("max_steps: 6", "max_steps: 6, lr_scheduler: cosine_restarts"),
                          "train.lr_scheduler: Input should be 'linear', 'cosine' or 'constant'"),
    "unknown task": (TINY_SWEEP.replace("tasks: [arc_easy]", "tasks: [arc_medium]"), "unknown task 'arc_medium'"),
    "train-less task": (TINY_SWEEP.replace("tasks: [arc_easy, openbookqa]", "tasks: [piqa]"), "'piqa' has no train split"),
    "unknown backbone": (TINY_SWEEP.replace("[tiny-llama]", "[gpt-17]"), "unknown backbone 'gpt-17'"),
    "duplicate seeds": (TINY_SWEEP.replace("seeds: [1]", "seeds: [1, 1]"), "duplicate entries: 1"),
    "duplicate methods": (TINY_SWEEP.replace("- name: none", "- name: lora"), "duplicate method names: lora"),
    "non-positive rank": (TINY_SWEEP.replace("{r: 4}", "{r: 0}"), "methods.1.hparams.r: must be a positive integer, got 0"),
    "empty grid": (TINY_SWEEP.replace("{r: 4}", "{r: []}"), "r: empty grid"),
    "duplicate grid rows": (TINY_SWEEP.replace("{r: 4}", "{r: [4, 4]}"), "duplicate method names: lora(r=4)"),
    "duplicate backbones": (TINY_SWEEP.replace("[tiny-llama]", "[tiny-llama, tiny-llama]"), "duplicate backbone names: tiny-llama"),
    "bad backbone override": (TINY_SWEEP.replace("[tiny-llama]", "[{name: tiny-llama, train: {lr: -1}}]"), "backbones.0.train.lr"),
    "too many cpus": (TINY_SWEEP + "resources: {cpus: 4096}\n", "resources: no node of this machine has 4096 CPUs"),
    "too many gpus": (TINY_SWEEP + "resources: {gpus: 64}\n", "resources: no node of this machine has 1 CPUs and 64 GPUs"),
    "too many processes": (TINY_SWEEP + "resources: {cpus: 1, processes: 4096}\n", "resources: no node of this machine has 4096 processes × 1 CPUs"),
    "unknown resource": (TINY_SWEEP + "resources: {tpus: 1}\n", "resources.tpus: Extra inputs are not permitted"),
    "zero retries below": (TINY_SWEEP + "max_retries: -1\n", "max_retries: Input should be greater than or equal to 0"),
    "documents disagree on the name": (TINY_SWEEP + "---\n" + TINY_SWEEP.replace("name: tiny", "name: other"), "name: every document of one file runs as one sweep, so they need the same name, got tiny, other"),
    "documents disagree on retries": (TINY_SWEEP + "---\n" + TINY_SWEEP + "max_retries: 3\n", "max_retries: every document"),
    "bad second document": (TINY_SWEEP + "---\n" + TINY_SWEEP.replace("name: lora", "name: lorax"), "methods.1: unknown method 'lorax'"),
    "unknown peft type": (TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", "name: peft\n    hparams: {peft_type: LORAX}"),
                          "methods.1.hparams.peft_type: must be one of peft's types (ADALORA,"),
    "unknown peft field": (TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", "name: peft\n    hparams: {peft_type: LOKR, rank: 4}"),
                           "methods.1.hparams.rank: is not a field of peft's LoKrConfig"),
    "bad peft value": (TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", "name: peft\n    hparams: {peft_type: LOHA, r: eight}"),
                       "methods.1.hparams.r: must be int (LoHaConfig), got 'eight'"),
    "peft's own check": (TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", "name: peft\n    hparams: {peft_type: OFT, r: 4}"),
                         "methods.1: method 'peft': OFTConfig: You can only specify either r (4) or oft_block_size (32)"),
    "peft config file missing": (TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", "name: peft\n    config: /nowhere/adapter_config.json"),
                                 "config: no such file /nowhere/adapter_config.json"),
    "config on another method": (TINY_SWEEP.replace("hparams: {r: 4}", "config: adapter_config.json"), "config: only a `peft` row reads a peft config file"),
    "two peft rows alike": (TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", "name: peft\n    hparams: {peft_type: LOKR}\n  - name: peft\n    hparams: {peft_type: lokr}"),
                            "duplicate method names: lokr"),
    "empty methods": (TINY_SWEEP.replace("  - name: none\n  - name: lora\n    hparams: {r: 4}\n", "").replace("methods:", "methods: []"), "methods: List should have at least 1 item"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_is_one_line_naming_the_problem(case, write_spec, capsys, tracking_uri):
    text, expected = BAD[case]
    assert main(["validate", str(write_spec(text))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err, err


def test_missing_data_dir_is_rejected(write_spec, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTBENCH_DATA", str(tmp_path / "nowhere"))
    assert main(["validate", str(write_spec(TINY_SWEEP))]) == 2
    assert "nowhere is not a directory" in capsys.readouterr().err


def test_validate_cli_exit_codes(write_spec, tmp_path):
    good = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(write_spec(TINY_SWEEP))], capture_output=True, text=True)
    assert good.returncode == 0 and "2 cells" in good.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("no such file")
    assert not (tmp_path / "mlflow.db").exists()


def test_run_rejects_an_unsatisfiable_spec_before_ray_and_mlflow(write_spec, tracking_uri, tmp_path):
    import ray

    path = write_spec(TINY_SWEEP + "resources: {cpus: 4096}\n")
    assert main(["run", str(path), "--tracking-uri", tracking_uri]) == 2
    assert not (tmp_path / "mlflow.db").exists() and not ray.is_initialized()


def test_a_file_of_several_sweeps_validates_and_plans_as_one(tracking_uri, capsys):
    """configs/nightly.yaml is two documents (GLUE and commonsense cannot share one): the CLI takes it whole."""
    path = Path(__file__).parent.parent / "configs" / "nightly.yaml"
    sweeps = spec.load_all(path)
    cells = spec.expand_all(sweeps)
    assert len(sweeps) == 2 and {c.backbone for c in cells} == {"smollm2-135m", "minilm-l6"}
    assert main(["validate", str(path)]) == 0
    assert f"ok, {len(cells)} cells" in capsys.readouterr().out
    assert main(["plan", str(path), "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert f"{len(cells)} cells, 0 already finished" in out and all(c.run_key in out for c in cells)


def test_peft_rows_are_named_by_type_and_what_differs_and_read_a_saved_config(write_spec, tmp_path):
    """A saved adapter_config.json (peft's own save_pretrained) gives the row its fields, less
    peft's bookkeeping and its defaults; unlabelled rows of one type show the fields that differ,
    a field a row leaves out at peft's default (LoKr's alpha 8, target_modules None)."""
    import peft

    peft.LoKrConfig(r=4, alpha=16, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(tmp_path / "lokr")
    text = TINY_SWEEP.replace("name: lora\n    hparams: {r: 4}", f"""name: peft
    config: {tmp_path / "lokr" / "adapter_config.json"}
  - name: peft
    hparams: {{peft_type: LOKR, r: 8}}
  - name: peft
    hparams: {{peft_type: OFT, r: 0, oft_block_size: [4, 8]}}
  - name: peft
    label: mine
    hparams: {{peft_type: LOKR, r: 2}}""")
    cells = spec.expand(spec.load(write_spec(text)))
    rows = {c.label: c.hparams for c in cells}
    assert list(rows) == ["none", "lokr(alpha=16, r=4, target_modules=['q_proj'])", "lokr(alpha=8, r=8, target_modules=None)",
                          "oft(oft_block_size=4)", "oft(oft_block_size=8)", "mine"]
    assert rows["lokr(alpha=16, r=4, target_modules=['q_proj'])"] == {"peft_type": "LOKR", "r": 4, "alpha": 16, "target_modules": ["q_proj"]}
