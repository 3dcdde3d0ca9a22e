"""ElaLoRA (Chang et al. 2025): SVD-form LoRA whose ranks are pruned and expanded by importance.

ΔW = s · P diag(λ ⊙ m) Q with capacity max_r per adapted linear, m ∈ {0,1}^max_r the active
ranks (init_r of them at the start), λ = 0 at init (ΔW = 0). Importance of rank i is an EMA
of the sensitivity |λ_i · ∂L/∂λ_i| (AdaLoRA's score). Every `interval` steps between
t_init·T and (1 − t_final)·T, the `k` least important active ranks over the whole model are
pruned (m_i = 0, λ_i = 0) and `k` ranks are opened in the layers with the highest mean
importance (a fresh random P column and Q row, λ_i = 0, so ΔW does not jump): the budget
stays constant while ranks move to where they matter.

peft has AdaLoRA (prune only) but not ElaLoRA; this is a LoRA variant with P = lora_B,
Q = lora_A, and λ, m in `lora_ela`. AdaLoRA's orthogonality penalty is not used.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from adapters import variants, zero
from adapters.registry import register, register_after_backward


class RankGate(nn.Module):
    """λ (trained), the active-rank mask m (saved) and the importance EMA (not saved)."""

    def __init__(self, max_r: int, init_r: int):
        super().__init__()
        self.lam = nn.Parameter(torch.zeros(max_r))
        self.register_buffer("mask", (torch.arange(max_r) < init_r).float())
        self.register_buffer("importance", torch.zeros(max_r), persistent=False)


class ElaVariant(variants.PeftbenchVariant):
    @staticmethod
    def init(module, adapter_name, config, **kwargs):
        # P must not start at zero: ∂L/∂λ_i = s·p_iᵀ G q_i, and λ = 0 already makes ΔW = 0.
        nn.init.normal_(module.lora_B[adapter_name].weight, std=0.02)
        nn.init.normal_(module.lora_A[adapter_name].weight, std=0.02)
        gate = RankGate(module.r[adapter_name], config.peftbench_options["init_r"])
        variants.add_container(module, "lora_ela")[adapter_name] = gate.to(module.lora_A[adapter_name].weight.device)

    @staticmethod
    def factors(module, adapter):
        """(s·P·diag(λ ⊙ m), Q), ΔW = their product."""
        gate = module.lora_ela[adapter]
        return module.scaling[adapter] * module.lora_B[adapter].weight * (gate.lam * gate.mask), module.lora_A[adapter].weight

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        gate = module.lora_ela[active_adapter]
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x)) * (gate.lam * gate.mask)
        return result + module.scaling[active_adapter] * module.lora_B[active_adapter](h)


variants.VARIANTS["elalora"] = ElaVariant


@register("elalora")
def build_elalora(
    model: nn.Module,
    init_r: int,
    max_r: int,
    lora_alpha: float,
    lora_dropout: float,
    target_modules: str | list[str],
    k: int,
    interval: int,
    t_init: float,
    t_final: float,
    beta: float,
) -> nn.Module:
    """ElaLoRA: ΔW = (α/max_r)·P diag(λ ⊙ m) Q, init_r of max_r ranks active, λ = 0 at init.

    The loop must call `adapters.after_backward` every step (importance, prune and expand).
    Trainable parameters: Σ max_r·(d_in + d_out + 1) (inactive slots stay parameters).
    """
    options = dict(init_r=init_r, k=k, interval=interval, t_init=t_init, t_final=t_final, beta=beta)
    return variants.build(model, "elalora", options, max_r, lora_alpha, lora_dropout, target_modules)


@register_after_backward("elalora")
def reallocate(model: nn.Module, step: int, total_steps: int) -> None:
    """Update the importance EMAs from λ's gradients; on schedule, prune k ranks and expand k."""
    found = list(variants.layers(model, "elalora"))
    opts = model.peft_config[model.active_adapter].peftbench_options
    gates = [layer.lora_ela[adapter] for _, layer, adapter in found]
    with torch.no_grad():
        for gate in gates:
            lam_grad = zero.grad(gate.lam)
            if lam_grad is not None:
                score = (gate.lam * lam_grad).abs() * gate.mask
                gate.importance.mul_(opts["beta"]).add_(score, alpha=1 - opts["beta"])
        start, stop = opts["t_init"] * total_steps, (1 - opts["t_final"]) * total_steps
        if start <= step < stop and step % opts["interval"] == 0 and step > 0:
            _prune_and_expand(found, gates, opts["k"])
            zero.written([g.lam for g in gates] + [w for _, layer, a in found for w in (layer.lora_A[a].weight, layer.lora_B[a].weight)])


def _prune_and_expand(found, gates, k: int) -> None:
    active = [(float(g.importance[i]), n, i) for n, g in enumerate(gates) for i in torch.nonzero(g.mask).flatten().tolist()]
    pruned = set()
    for _, n, i in sorted(active)[:k]:
        gates[n].mask[i] = 0
        gates[n].lam[i] = 0
        pruned.add((n, i))
    mean = [float(g.importance[g.mask > 0].mean()) if g.mask.any() else 0.0 for g in gates]
    # a slot pruned in this round is not reopened in it: that would only reset it
    free = {n: [i for i in torch.nonzero(g.mask == 0).flatten().tolist() if (n, i) not in pruned] for n, g in enumerate(gates)}
    for n in [n for n in sorted(range(len(gates)), key=lambda n: -mean[n]) if free[n]][:k]:
        gate, (_, layer, adapter), i = gates[n], found[n], free[n][0]
        gate.mask[i], gate.lam[i], gate.importance[i] = 1, 0, 0
        nn.init.normal_(layer.lora_B[adapter].weight[:, i], std=0.02)
        nn.init.normal_(layer.lora_A[adapter].weight[i], std=0.02)
