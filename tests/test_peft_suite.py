"""import-peft: a folder in peft's method_comparison layout (written here) becomes a sweep that validates."""

from __future__ import annotations

import json

import yaml

from pipeline import spec
from pipeline.__main__ import main

DEFAULTS = {  # every kind of field peft's TrainConfig has, in its file format
    "model_id": "some-org/some-model", "dtype": "float32", "max_seq_length": 128, "batch_size": 4, "batch_size_eval": 16,
    "max_steps": 40, "eval_steps": 20, "compile": False, "use_gc": False, "seed": 0, "grad_norm_clip": 1.0,
    "optimizer_type": "AdamW", "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 0.1}, "lr_scheduler": "cosine",
    "use_amp": False, "autocast_adapter_dtype": True, "attn_implementation": None,
    "generation_kwargs": {"max_length": 128}, "query_template": "Question: {query}\nAnswer:",
}


def write_suite(root):
    def put(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    put(root / "default_training_params.json", DEFAULTS)
    put(root / "experiments/lora/tiny-rank16/adapter_config.json",
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": None})
    put(root / "experiments/lokr/tiny-rank4-lr1e-3/adapter_config.json", {"peft_type": "LOKR", "r": 4, "alpha": 4})
    # an override, merged over the defaults one level deep: its optimizer_kwargs replace the default's whole
    put(root / "experiments/lokr/tiny-rank4-lr1e-3/training_params.json",
        {"optimizer_kwargs": {"lr": 1e-3, "betas": [0.9, 0.99]}, "max_steps": 20, "lr_scheduler": None})
    put(root / "experiments/full-finetuning/tiny-lr1e-5/training_params.json", {"optimizer_kwargs": {"lr": 1e-5, "weight_decay": 0.1}})


def test_import_peft_writes_a_sweep_that_validates(tmp_path, capsys):
    write_suite(tmp_path / "suite")
    out = tmp_path / "sweep.yaml"
    assert main(["import-peft", str(tmp_path / "suite"), "--backbone", "tiny-llama", "--tasks", "arc_easy",
                 "--n-examples", "16", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ignored: autocast_adapter_dtype, compile, eval_steps, generation_kwargs, optimizer_kwargs.betas, query_template, use_amp"]
    assert main(["validate", str(out)]) == 0

    written = yaml.safe_load(out.read_text())
    assert written["name"] == "suite" and written["backbones"] == ["tiny-llama"] and written["seeds"] == [0]
    assert written["regimes"] == [{"name": "train-16", "tasks": ["arc_easy"], "n_examples": 16}]
    assert written["train"] == {"lr": 1e-4, "weight_decay": 0.1, "max_steps": 40, "micro_batch_size": 4, "max_seq_len": 128,
                                "gradient_checkpointing": False, "attn_implementation": None, "grad_clip": 1.0,
                                "lr_scheduler": "cosine", "warmup_ratio": 0.1, "precision": "fp32"}
    assert written["eval"] == {"batch_size": 16}
    rows = {m["label"]: m for m in written["methods"]}
    assert rows["full-finetuning/tiny-lr1e-5"] == {"name": "full", "label": "full-finetuning/tiny-lr1e-5", "train": {"lr": 1e-5}}
    assert rows["lora/tiny-rank16"] == {"name": "peft", "label": "lora/tiny-rank16",
                                       "hparams": {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "target_modules": [["q_proj", "v_proj"]]}}
    lokr = rows["lokr/tiny-rank4-lr1e-3"]
    assert lokr["hparams"] == {"peft_type": "LOKR", "r": 4, "alpha": 4}
    # lr from the override, weight decay torch AdamW's default (the override's kwargs have none), no scheduler: constant, no warmup
    assert lokr["train"] == {"lr": 1e-3, "weight_decay": 0.01, "max_steps": 20, "lr_scheduler": "constant", "warmup_ratio": 0.0}

    cells = {c.label: c for c in spec.expand(spec.load(out))}
    assert cells["lokr/tiny-rank4-lr1e-3"].train.lr_scheduler == "constant" and cells["lokr/tiny-rank4-lr1e-3"].train.max_steps == 20
    assert cells["lora/tiny-rank16"].hparams["target_modules"] == ["q_proj", "v_proj"] and cells["lora/tiny-rank16"].train.lr == 1e-4


def test_import_peft_names_what_is_wrong(tmp_path, capsys):
    assert main(["import-peft", str(tmp_path), "--backbone", "tiny-llama"]) == 2
    assert "no default_training_params.json" in capsys.readouterr().err
