"""Bottleneck adapters (Houlsby et al. 2019): h + W_up f(W_down h) after attention and after the FFN.

peft has no Houlsby adapter. `Bottleneck` wraps the module whose output is the sub-layer's
output (LLaMA: self_attn.o_proj and mlp.down_proj; BERT: attention.output.dense and
output.dense), so the adapter sits where Houlsby puts it,
before the residual add. W_up (and its bias) start at zero, so the adapter is the identity at
init. Not mergeable (f is nonlinear): it adds inference cost. Houlsby also trains the layer
norms; this row does not, so it isolates the adapters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from adapters.registry import MethodError, register


class Bottleneck(nn.Module):
    """base(x) + up(gelu(down(base(x)))), up zero-initialised."""

    def __init__(self, base: nn.Module, size: int):
        super().__init__()
        width = base.out_features
        self.base_layer = base
        self.down = nn.Linear(width, size).to(base.weight.device, base.weight.dtype)
        self.up = nn.Linear(size, width).to(base.weight.device, base.weight.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.up(nn.functional.gelu(self.down(h)))


@register("adapter")
def build_adapter(model: nn.Module, bottleneck: int, target_modules: tuple[str, ...]) -> nn.Module:
    """Houlsby adapters on the outputs of attention and FFN: the linears whose dotted path ends
    with one of `target_modules` (the defaults name them in LLaMA and in BERT-like encoders).

    Trainable parameters: Σ over wrapped linears (output width h) of 2·h·bottleneck + bottleneck + h.
    """
    model.requires_grad_(False)
    targets = [
        path for path, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(path == t or path.endswith("." + t) for t in target_modules)
    ]
    if not targets:
        raise MethodError(f"method 'adapter': no linear module named {', '.join(target_modules)} in {type(model).__name__}")
    for path in targets:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, name, Bottleneck(getattr(parent, name), bottleneck))
    return model
