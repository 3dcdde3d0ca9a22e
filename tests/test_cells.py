"""Every registered method as a whole cell, in process (no Ray): train, diagnostics, save, score,
and the logged `adapter/` artifact loads back to the model that was scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import peft
import pytest
import torch
from mlflow.tracking import MlflowClient

import adapters
from adapters import catalog, peft_methods
from jobs import backbones
from jobs.cell import run_cell
from jobs.contract import Cell, EvalArgs, Regime, Resources, TrainArgs
from jobs.families.multiple_choice import MultipleChoice

# Small settings where a method's defaults would dwarf the tiny model.
HPARAMS = {
    "vera": {"r": 16}, "randlora": {"r": 16}, "adalora": {"init_r": 4, "target_r": 2}, "lr_lora": {"r": 4},
    "lr_lora_fixed": {"r": 4}, "sine_lora": {"r": 4}, "nola": {"num_basis_a": 8, "num_basis_b": 8},
    "elalora": {"init_r": 2, "max_r": 4}, "adapter": {"bottleneck": 8}, "lora_shift": {"shift_dim": 8},
    "peft": {"peft_type": "LOKR", "r": 4},
}
# Every registered method, and more `peft` rows: peft's own types the catalog has no name for.
CASES = [(method, HPARAMS.get(method, {})) for method in catalog.available()] + [
    ("peft", {"peft_type": "OFT", "r": 0, "oft_block_size": 4}),
    ("peft", {"peft_type": "LOHA", "r": 4, "target_modules": "all-linear"}),
    # Types with a per-step hook: AdaLoRA's budget (total_step here is the loop's to replace) and AdaMSS's masking
    ("peft", {"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 1000}),
    ("peft", {"peft_type": "ADAMSS", "r": 8, "num_subspaces": 2, "subspace_rank": 2, "use_asa": True, "asa_target_subspaces": 1,
              "init_warmup": 0, "final_warmup": 1, "mask_interval": 1}),
]
# The README's list: these load with plain peft.PeftModel.from_pretrained; every other method
# with adapters.load_adapter, and a plain peft load of it fails.
PEFT_NATIVE = {"lora", "rslora", "dora", "pissa", "loraplus", "vera", "randlora", "adalora", "ia3", "prefix_tuning", "prompt_tuning", "peft"}
NO_ADAPTED_LINEARS = {"none", "full", "bitfit", "adapter", "prefix_tuning", "prompt_tuning"}  # nothing for the diagnostics
IDS = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    """A local folder holding tiny-llama's shape with biases (BitFit needs them) and its tokenizer."""
    from transformers import LlamaForCausalLM

    tiny, tokenizer = backbones.load("tiny-llama")
    config = tiny.config
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("biased-tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_the_catalog_is_what_this_file_covers():
    assert PEFT_NATIVE | NO_ADAPTED_LINEARS <= set(catalog.available())
    assert set(HPARAMS) <= set(catalog.available())


@pytest.mark.slow  # DeepSpeed engines
@pytest.mark.usefixtures("eager_kernels", "one_thread")
@pytest.mark.parametrize("method, hparams", CASES, ids=[f"{m}-{hp['peft_type']}" if m == "peft" else m for m, hp in CASES])
def test_every_method_runs_as_a_whole_cell_and_its_adapter_loads_back(method, hparams, backbone, tracking_uri, tmp_path, monkeypatch):
    scored = {}
    evaluate = MultipleChoice.evaluate

    def evaluate_and_keep_logits(self, model, *args, **kwargs):  # the model the cell scores, as it scores it
        scored["logits"] = logits(model)
        return evaluate(self, model, *args, **kwargs)

    monkeypatch.setattr(MultipleChoice, "evaluate", evaluate_and_keep_logits)
    hooked = []  # the per-step hooks of peft types that ran, one entry per step
    for peft_type, hook in peft_methods.PEFT_TYPE_AFTER_BACKWARD.items():
        monkeypatch.setitem(peft_methods.PEFT_TYPE_AFTER_BACKWARD, peft_type, lambda *a, t=peft_type, h=hook: (hooked.append(t), h(*a)))
    cell = Cell(
        sweep="every-method", method=method, label=method, hparams=hparams, backbone=backbone,
        regime=Regime(name="cs-8", tasks=["arc_easy"], n_examples=8), seed=0,
        train=TrainArgs(lr=1e-3, micro_batch_size=4, max_steps=2, max_seq_len=64), eval=EvalArgs(limit=4, batch_size=4),
        tasks=["arc_easy"], resources=Resources(),
    )
    result = run_cell(cell, tracking_uri, checkpoint_dir=str(tmp_path / "checkpoints"))
    assert result.status == "FINISHED", result.error
    assert 0 <= result.metrics["arc_easy/acc"] <= 1
    client = MlflowClient(tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(result.run_id)}

    if method == "none":  # nothing trained, nothing to save: the scored model is the backbone
        assert "adapter" not in logged
        torch.testing.assert_close(scored["logits"], logits(backbones.load(backbone)[0]))
        return
    assert result.metrics["train/steps"] == 2
    assert hooked == [hparams["peft_type"]] * 2 if hparams.get("peft_type") in peft_methods.PEFT_TYPE_AFTER_BACKWARD else not hooked
    if method not in NO_ADAPTED_LINEARS:
        final = json.loads(Path(client.download_artifacts(result.run_id, "analysis/final.json", str(tmp_path))).read_text())
        assert final["modules"] and all(math.isfinite(m["stable_rank"]) for m in final["modules"])

    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="adapter", dst_path=str(tmp_path), tracking_uri=tracking_uri))
    assert json.loads((local / "peftbench.json").read_text()) == {"method": method, "hparams": cell.hparams}
    if method in PEFT_NATIVE:
        loaded = peft.PeftModel.from_pretrained(backbones.load(backbone)[0], local)
    else:
        with pytest.raises((KeyError, ValueError), match="adapters.load_adapter|adapter_config.json"):
            peft.PeftModel.from_pretrained(backbones.load(backbone)[0], local)
        loaded = adapters.load_adapter(backbones.load(backbone)[0], local)
    torch.testing.assert_close(logits(loaded.eval()), scored["logits"], atol=1e-5, rtol=1e-4)
    if method == "adalora" or hparams.get("peft_type") == "ADALORA":  # its per-step hook ran: the budget follows the cell's real length
        saved = json.loads((local / "adapter_config.json").read_text())
        assert saved["total_step"] == 2 and saved["rank_pattern"]
