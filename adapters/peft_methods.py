"""Methods that `peft` implements: thin config builders, no reimplementation.

`target_modules="all-linear"` adapts every linear layer but the output head, the LR-LoRA
paper's setting (q,k,v,o,gate,up,down on LLaMA); `None` lets peft pick its per-architecture
default. Parameter-count formulas sum over the adapted linears, d_out × d_in each.
"""

from __future__ import annotations

import peft
import torch
import torch.nn as nn
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.integrations import dequantize_bnb_weight as bnb_dequantize

from adapters import zero
from adapters.registry import adamw, register, register_after_backward, register_optimizer


def task_type(model: nn.Module) -> peft.TaskType | None:
    """peft's task type for the backbone, so peft keeps a classifier head trainable."""
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return peft.TaskType.CAUSAL_LM
    if name.endswith("ForSequenceClassification"):
        return peft.TaskType.SEQ_CLS
    return None


def _lora(model, method, r, lora_alpha, lora_dropout, target_modules, custom_modules=None, **settings) -> peft.PeftModel:
    config = peft.LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules, task_type=task_type(model), **settings
    )
    if custom_modules:
        config._register_custom_module(custom_modules)
    return peft.get_peft_model(model, config)


@register("lora")
def build_lora(model: nn.Module, r: int, lora_alpha: float, lora_dropout: float, target_modules: str | list[str]) -> nn.Module:
    """LoRA (Hu et al. 2022): ΔW = (α/r)·B·A, B zero at init.

    Trainable parameters: Σ r·(d_in + d_out).
    """
    return _lora(model, "lora", r, lora_alpha, lora_dropout, target_modules)


@register("rslora")
def build_rslora(model: nn.Module, r: int, lora_alpha: float, lora_dropout: float, target_modules: str | list[str]) -> nn.Module:
    """rsLoRA (Kalajdzievski 2023): LoRA with scale α/√r, stable across ranks.

    Trainable parameters: Σ r·(d_in + d_out).
    """
    return _lora(model, "rslora", r, lora_alpha, lora_dropout, target_modules, use_rslora=True)


@register("dora")
def build_dora(model: nn.Module, r: int, lora_alpha: float, lora_dropout: float, target_modules: str | list[str]) -> nn.Module:
    """DoRA (Liu et al. 2024): W = m ⊙ (W0 + sBA)/‖W0 + sBA‖_row, m initialised to ‖W0‖_row.

    Trainable parameters: Σ r·(d_in + d_out) + d_out (the magnitude vector).
    """
    return _lora(model, "dora", r, lora_alpha, lora_dropout, target_modules, use_dora=True)


@register("pissa")
def build_pissa(model: nn.Module, r: int, lora_alpha: float, lora_dropout: float, target_modules: str | list[str]) -> nn.Module:
    """PiSSA (Meng et al. 2024): B·A start as W0's top-r singular part, W0 keeps the residual.

    lora_alpha defaults to r (s = 1, as in the paper). The adapted model equals the base model at
    init up to the SVD's rounding. Trainable parameters: Σ r·(d_in + d_out).
    """
    return _lora(model, "pissa", r, lora_alpha, lora_dropout, target_modules, init_lora_weights="pissa")


@register("loraplus")
def build_loraplus(
    model: nn.Module,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules: str | list[str],
    loraplus_lr_ratio: float,
) -> nn.Module:
    """LoRA+ (Hayou et al. 2024): LoRA whose B learns loraplus_lr_ratio× faster than A (see the optimizer).

    Trainable parameters: Σ r·(d_in + d_out).
    """
    return _lora(model, "loraplus", r, lora_alpha, lora_dropout, target_modules)


@register_optimizer("loraplus")
def loraplus_optimizer(model, lr: float, weight_decay: float, loraplus_lr_ratio: float, **_) -> torch.optim.Optimizer:
    """peft's LoRA+ parameter groups (B at lr × ratio) under AdamW, without its empty groups
    (DeepSpeed drops empty groups, which would desynchronise the LR schedule from the optimizer)."""
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=loraplus_lr_ratio, weight_decay=weight_decay, betas=(0.9, 0.999)
    )
    return torch.optim.AdamW([g for g in optimizer.param_groups if g["params"]], lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


@register("vera")
def build_vera(
    model: nn.Module, r: int, d_initial: float, vera_dropout: float, target_modules: str | list[str], projection_prng_key: int
) -> nn.Module:
    """VeRA (Kopiczko et al. 2024): ΔW = Λ_b B Λ_d A, A and B frozen shared random, λ_b = 0 at init.

    Trainable parameters: Σ (d_out + r) (λ_b and λ_d per adapted linear).
    """
    config = peft.VeraConfig(
        r=r, d_initial=d_initial, vera_dropout=vera_dropout, target_modules=target_modules,
        projection_prng_key=projection_prng_key, task_type=task_type(model),
    )
    return peft.get_peft_model(model, config)


@register("randlora")
def build_randlora(
    model: nn.Module,
    r: int,
    randlora_alpha: float,
    randlora_dropout: float,
    target_modules: str | list[str],
    projection_prng_key: int,
) -> nn.Module:
    """RandLoRA (Albert et al. 2025): ΔW = Σ_n B_n Λ_n A Γ_n over N = ⌈min(d)/r⌉ frozen random bases.

    peft scales by α/r; the reference code by α/r/√N: α values do not transfer between them.
    Trainable parameters: Σ N·(r + min(d_in, d_out)) with N = ⌈min(d_in, d_out)/r⌉ (Λ and Γ).
    """
    config = peft.RandLoraConfig(
        r=r, randlora_alpha=randlora_alpha, randlora_dropout=randlora_dropout, target_modules=target_modules,
        projection_prng_key=projection_prng_key, task_type=task_type(model),
    )
    return peft.get_peft_model(model, config)


@register("adalora")
def build_adalora(
    model: nn.Module,
    init_r: int,
    target_r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules: str | list[str],
    total_step: int,
    tinit: int,
    tfinal: int,
    deltaT: int,
) -> nn.Module:
    """AdaLoRA (Zhang et al. 2023): ΔW = P Λ Q with SVD-style budgeting of ranks during training.

    The loop must call `adapters.after_backward` every step (it calls `update_and_allocate` and
    sets `total_step` to the loop's real step count). ΔW = 0 at init (Λ = 0).
    Trainable parameters at init: Σ init_r·(d_in + d_out + 1).
    """
    config = peft.AdaLoraConfig(
        init_r=init_r, target_r=target_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
        total_step=total_step, tinit=tinit, tfinal=tfinal, deltaT=deltaT, task_type=task_type(model),
    )
    return peft.get_peft_model(model, config)


@register_after_backward("adalora")
def adalora_after_backward(model, step: int, total_steps: int) -> None:
    """AdaLoRA's rank budgeting: after backward, before the optimizer zeroes the gradients."""
    config = model.peft_config[model.active_adapter]
    if config.total_step != total_steps:
        config.total_step = total_steps  # the schedule (tinit..total_step − tfinal) needs the real length
    params = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    with zero.visible_grads(params):  # peft reads p.grad, which ZeRO-2 empties
        model.base_model.update_and_allocate(step)
    zero.written(params)  # peft masks lora_E in place; ZeRO's master copy must follow


@register_optimizer("adalora")
def adalora_optimizer(model, lr: float, weight_decay: float, **_) -> torch.optim.Optimizer:
    """AdamW that re-applies AdaLoRA's rank pattern after every step.

    peft's recipe masks after optimizer.step(); our hook runs before it (DeepSpeed steps and
    zeroes gradients in one call), so without this the step after a mask would move the pruned
    singular values off zero again, and the trained adapter would not have its ranks.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    singular_values = [p for n, p in model.named_parameters() if ".lora_E." in n]

    def remask(*_):
        pattern = model.peft_config[model.active_adapter].rank_pattern
        if pattern:
            model.base_model.rankallocator.mask_using_rank_pattern(model.base_model.model, pattern)
            zero.written(singular_values)

    optimizer.register_step_post_hook(remask)
    return optimizer


@register("ia3")
def build_ia3(model: nn.Module, target_modules: list[str] | None, feedforward_modules: list[str] | None) -> nn.Module:
    """IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the FFN input, ones at init.

    Trainable parameters: Σ d_out (attention targets) or d_in (feed-forward targets).
    Defaults are peft's per-architecture targets (LLaMA: k_proj, v_proj, down_proj).
    """
    config = peft.IA3Config(target_modules=target_modules, feedforward_modules=feedforward_modules, task_type=task_type(model))
    return peft.get_peft_model(model, config)


@register("prefix_tuning")
def build_prefix_tuning(model: nn.Module, num_virtual_tokens: int) -> nn.Module:
    """Prefix tuning (Li & Liang 2021): trained key/value prefixes for every layer.

    Not the identity at init (the prefixes are random), and not mergeable.
    Trainable parameters: num_virtual_tokens · n_layers · 2 · (n_kv_heads · head_dim).
    """
    return peft.get_peft_model(model, peft.PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens, task_type=task_type(model)))


@register("prompt_tuning")
def build_prompt_tuning(model: nn.Module, num_virtual_tokens: int) -> nn.Module:
    """Prompt tuning (Lester et al. 2021): trained input embeddings prepended to every sequence.

    Not the identity at init (the prompt is random), and not mergeable.
    Trainable parameters: num_virtual_tokens · hidden_size.
    """
    return peft.get_peft_model(model, peft.PromptTuningConfig(num_virtual_tokens=num_virtual_tokens, task_type=task_type(model)))


@register("peft")
def build_peft(model: nn.Module, peft_type: str, **fields) -> nn.Module:
    """Any peft method: peft's own config class for `peft_type` with `fields` (checked against
    that class by adapters.catalog before any cell runs), the task type from the backbone.

    Trainable parameters: what peft's method for `peft_type` trains, as the cell counts it.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type.upper()](**fields, task_type=task_type(model))
    return peft.get_peft_model(model, config)


def adamss_after_backward(model, step: int, total_steps: int) -> None:
    """AdaMSS's subspace allocation (a no-op unless use_asa): importance from the gradients, then
    the masking of subspaces, after backward and before the optimizer zeroes the gradients."""
    params = [p for n, p in model.named_parameters() if "adamss_" in n and p.requires_grad]
    with zero.visible_grads(params):  # peft reads p.grad, which ZeRO-2 empties
        model.base_model.update_and_allocate(step)


# The per-step needs of the peft types a `peft` row may name: the hooks their named methods use,
# found by the row's peft type, so the loop sees one method (`peft`) and no type names.
PEFT_TYPE_OPTIMIZERS = {"ADALORA": adalora_optimizer}
PEFT_TYPE_AFTER_BACKWARD = {"ADALORA": adalora_after_backward, "ADAMSS": adamss_after_backward}


@register_optimizer("peft")
def peft_optimizer(model, lr: float, weight_decay: float, peft_type: str, **_) -> torch.optim.Optimizer:
    """The optimizer of the row's peft type (AdaLoRA's re-masking AdamW), else plain AdamW."""
    make = PEFT_TYPE_OPTIMIZERS.get(peft_type.upper())
    return make(model, lr=lr, weight_decay=weight_decay) if make else adamw(model, lr, weight_decay)


@register_after_backward("peft")
def peft_after_backward(model, step: int, total_steps: int) -> None:
    """The per-step hook of the row's peft type (AdaLoRA's, AdaMSS's update_and_allocate), if it has one."""
    peft_type = model.peft_config[model.active_adapter].peft_type
    hook = PEFT_TYPE_AFTER_BACKWARD.get(getattr(peft_type, "value", peft_type))
    if hook is not None:
        hook(model, step, total_steps)


@register("qlora")
def build_qlora(model: nn.Module, r: int, lora_alpha: float, lora_dropout: float, target_modules: str | list[str]) -> nn.Module:
    """QLoRA (Dettmers et al. 2023): LoRA over a frozen NF4 base (bitsandbytes, runs on CPU).

    Every linear layer but the output head is quantised to NF4 (block 64, fp32 compute) in
    place, then peft puts LoRA on the targets. ΔW = 0 at init: the adapted model equals the
    quantised base. Trainable parameters: Σ r·(d_in + d_out).
    """
    quantize_nf4(model)
    return _lora(model, "qlora", r, lora_alpha, lora_dropout, target_modules, custom_modules=nf4_lora_modules())


class NF4LoraLinear(LoraLinear):
    """peft's LoRA Linear over an NF4 Linear4bit that merges into a float nn.Linear.

    peft picks its own 4-bit LoRA layer only for models loaded quantised by transformers; over
    our in-place NF4 base it used the plain layer, whose merge adds ΔW to the packed 4-bit
    storage (a size mismatch). Here merging first replaces the base by its dequantised weight
    (in the dtype it was quantised from, the dtype the layer computed in), so merge_and_unload
    gives a plain model computing what the adapted one did, where peft's 4-bit merge would round
    W0 + ΔW to NF4 again.
    """

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.get_base_layer()
        if type(base) is not nn.Linear:
            weight = bnb_dequantize(base.weight)
            dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            dense.weight = nn.Parameter(weight, requires_grad=False)
            if base.bias is not None:
                dense.bias = nn.Parameter(base.bias.data.to(weight.dtype), requires_grad=False)
            self.base_layer = dense
        super().merge(safe_merge, adapter_names)


def nf4_lora_modules() -> dict[type[nn.Module], type[nn.Module]]:
    """peft's custom-module mapping for LoRA over quantize_nf4's layers (building and loading qlora)."""
    import bitsandbytes as bnb

    return {bnb.nn.Linear4bit: NF4LoraLinear}


def quantize_nf4(model: nn.Module) -> None:
    """Replace every nn.Linear except the output head by a frozen bitsandbytes NF4 Linear4bit.

    A sequence classifier's head (`classifier` or `score`, as peft's SEQ_CLS names it) stays
    float too: it is new and trains in full. Compute stays fp32 in eval too: bitsandbytes would
    otherwise repack W0 at the first no-grad forward on an AVX512-BF16 CPU and compute in bf16
    from then on (other numbers than training's, and a layout merging cannot dequantise).
    """
    import bitsandbytes as bnb

    heads = [model.get_output_embeddings()] + [c for n, c in model.named_children() if n in ("classifier", "score")]
    kept = {id(m) for head in heads if head is not None for m in head.modules()}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and id(child) not in kept:
                q = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None, compute_dtype=torch.float32, quant_type="nf4"
                )
                q.weight = bnb.nn.Params4bit(child.weight.data.float(), requires_grad=False, quant_type="nf4")
                q.support_avx512bf16_for_cpu = False
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, child_name, q.to(child.weight.device))
