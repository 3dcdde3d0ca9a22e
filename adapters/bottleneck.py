"""Bottleneck adapters (Houlsby et al. 2019): h + W_up f(W_down h) after attention and after the FFN.

peft has no Houlsby adapter. `Bottleneck` wraps the module whose output is the sub-layer's
output (LLaMA: self_attn.o_proj and mlp.down_proj), so the adapter sits where Houlsby puts it,
before the residual add. W_up (and its bias) start at zero, so the adapter is the identity at
init. Not mergeable (f is nonlinear): it adds inference cost. Houlsby also trains the layer
norms; this row does not, so it isolates the adapters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from adapters.peft_methods import positive
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
def build_adapter(model: nn.Module, bottleneck: int = 64, target_modules: tuple[str, ...] = ("o_proj", "down_proj")) -> nn.Module:
    """Houlsby adapters on the outputs of attention and FFN (modules named in target_modules).

    Trainable parameters: Σ over wrapped linears (output width h) of 2·h·bottleneck + bottleneck + h.
    """
    positive("adapter", bottleneck=bottleneck)
    model.requires_grad_(False)
    wrapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in target_modules and isinstance(child, nn.Linear):
                setattr(parent, name, Bottleneck(child, bottleneck))
                wrapped += 1
    if not wrapped:
        raise MethodError(f"method 'adapter': no linear module named {', '.join(target_modules)} in {type(model).__name__}")
    return model
