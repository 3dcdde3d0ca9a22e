"""Save and load any method's trained state: `save_adapter(model, path)`, `load_adapter(base, path)`.

peft methods use peft's own format and load with plain `peft.PeftModel.from_pretrained`. Our
LoRA-shaped methods (the variants, QLoRA's NF4 layers) are peft LoRA adapters with layers of our
own: peft alone would build its plain LoRA layers and drop our fields and tensors, a different
model without an error. So their adapter_config.json names no peft type peft knows (`peft_type`
says to use `load_adapter`, the real one is kept beside it): a plain peft load fails at once, and
`load_adapter` rebuilds our config class. Methods outside peft (bitfit, adapter, full) save
their trainable tensors, which peft cannot read (no adapter_config.json). `peftbench.json`
records the method and hyperparameters in every case.

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
REAL_PEFT_TYPE = "peftbench_peft_type"  # adapter_config.json's own peft_type, kept beside the marker


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
        if any(getattr(config, "_custom_modules", None) for config in model.peft_config.values()):
            _refuse_plain_peft(path, record["method"])
    else:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, path / TENSORS)


def _refuse_plain_peft(path: Path, method: str) -> None:
    """Make adapter_config.json one that peft's loaders reject with a KeyError naming `load_adapter`."""
    config_file = path / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    saved[REAL_PEFT_TYPE], saved["peft_type"] = saved["peft_type"], f"peftbench {method}: load it with adapters.load_adapter"
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True))


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
            config = variants.saved_config(path, peft.LoraConfig)
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
