"""Save and load any method's trained state: `save_adapter(model, path)`, `load_adapter(base, path)`.

peft methods use peft's own format (`save_pretrained` / `PeftModel.from_pretrained`); our LoRA
variants are peft LoRA adapters whose config class is rebuilt on load (peft alone would read a
plain LoraConfig and drop our fields). Methods outside peft (bitfit, adapter, full) save their
trainable tensors. `peftbench.json` records the method and hyperparameters in every case.

Two methods change the base model and are rebuilt rather than read: QLoRA (the base is
quantised to NF4 again before loading, and its LoRA layers are our NF4LoraLinear) and PiSSA (its base keeps the residual W0 − top-r
part, recomputed deterministically from W0 by the builder; then the trained factors load).
"""

from __future__ import annotations

import json
from pathlib import Path

import peft
import torch.nn as nn
from safetensors.torch import load_file, save_file

from adapters import variants
from adapters.peft_methods import nf4_lora_modules, quantize_nf4
from adapters.registry import MethodError, apply

RECORD = "peftbench.json"
TENSORS = "adapter.safetensors"


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write the method's trained state under `path` (a folder, created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    record = getattr(model, "peftbench_method", None)
    if record is None:
        raise MethodError("save_adapter: the model was not built by adapters.apply, so its method is unknown")
    (path / RECORD).write_text(json.dumps(record, indent=1))
    if isinstance(model, peft.PeftModel):
        model.save_pretrained(path)
    else:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, path / TENSORS)


def load_adapter(base_model: nn.Module, path: str | Path) -> nn.Module:
    """`base_model` (as `backbones.load` gives it) with the adapter saved under `path`, in eval mode."""
    path = Path(path)
    record = json.loads((path / RECORD).read_text())
    method, hparams = record["method"], record["hparams"]
    if method == "pissa":
        model = apply(base_model, method, **hparams)
        peft.set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    elif (path / "adapter_config.json").exists():
        if method == "qlora":
            quantize_nf4(base_model)
            config = peft.LoraConfig.from_pretrained(str(path))
            config._register_custom_module(nf4_lora_modules())
        else:
            config = variants.load_config(path)
        model = peft.PeftModel.from_pretrained(base_model, path, config=config)
    else:
        model = apply(base_model, method, **hparams)
        tensors = load_file(path / TENSORS)
        missing = {n for n, p in model.named_parameters() if p.requires_grad} - tensors.keys()
        if missing:
            raise MethodError(f"load_adapter: {path} lacks {len(missing)} trained tensors of method {method!r}, e.g. {sorted(missing)[0]}")
        model.load_state_dict(tensors, strict=False)
    model.peftbench_method = record
    return model.eval()
