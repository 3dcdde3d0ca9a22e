"""Every method, end to end on tiny-llama: identity at init, exact parameter counts, merge,
save → load, training lowers the loss, and the registry's errors."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adapters
from adapters.registry import MethodError
from jobs import backbones

ALL_METHODS = {
    "none", "full", "bitfit", "adapter", "lora", "rslora", "dora", "pissa", "loraplus", "vera", "randlora", "adalora",
    "ia3", "prefix_tuning", "prompt_tuning", "qlora", "lr_lora", "lr_lora_fixed", "lora_shift", "sine_lora", "nola",
    "dylora", "elalora", "peft",
}

# (method, hparams) cases: small settings keep the suite fast on 2 CPU cores.
CASES = [
    ("lora", {}),
    ("rslora", {}),
    ("dora", {}),
    ("pissa", {}),
    ("loraplus", {}),
    ("vera", {"r": 32}),
    ("randlora", {"r": 16}),
    ("adalora", {"init_r": 6, "target_r": 4}),
    ("ia3", {}),
    ("qlora", {}),
    ("lr_lora", {"r": 4}),  # paper default dropout 0.05: the unmerged path
    ("lr_lora", {"r": 4, "lora_dropout": 0.0, "residual": True}),  # dropout 0: one merged GEMM
    ("lr_lora", {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "scale_position": "outside"}),
    ("lr_lora_fixed", {"r": 4, "lora_dropout": 0.0}),
    ("sine_lora", {"r": 4}),
    ("lora_shift", {"shift": "linear"}),
    ("lora_shift", {"shift": "cyclic"}),
    ("lora_shift", {"shift": "cyclic", "pos": "row"}),
    ("lora_shift", {"shift": "learned"}),
    ("nola", {"num_basis_a": 16, "num_basis_b": 8}),
    ("dylora", {}),
    ("elalora", {"init_r": 4, "max_r": 6}),
    ("adapter", {"bottleneck": 8}),
    ("full", {}),
    ("none", {}),
]
NOT_IDENTITY_AT_INIT = {"prefix_tuning", "prompt_tuning"}  # random virtual tokens by construction
NOT_MERGEABLE = {"prefix_tuning", "prompt_tuning", "adapter", "bitfit", "full", "none"}


pytestmark = pytest.mark.usefixtures("eager_kernels", "one_thread")


@pytest.fixture(scope="module")
def tiny():
    model, _ = backbones.load("tiny-llama")
    return model


@pytest.fixture(scope="module")
def biased():
    """A tiny Llama with biases in attention and MLP, the kind of backbone BitFit needs."""
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


IDS = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def linears(model) -> list[tuple[str, int, int]]:
    """(name, d_out, d_in) of every linear but the head: what target_modules="all-linear" adapts."""
    return [(n.rsplit(".", 1)[-1], m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]


def expected_trainable(method: str, hp: dict, base) -> int:
    """The parameter-count formula of each builder's docstring, computed from the backbone's shapes."""
    full = {**adapters.hyperparameters(method), **hp}
    lin = linears(base)
    cfg = base.config
    lora = sum(full.get("r", 0) * (d_in + d_out) for _, d_out, d_in in lin)
    if method in ("lora", "rslora", "pissa", "loraplus", "qlora", "sine_lora", "dylora"):
        return lora
    if method == "dora":
        return lora + sum(d_out for _, d_out, _ in lin)
    if method in ("lr_lora", "lr_lora_fixed"):
        return lora + 2 * full["grid_size"] * len(lin)
    if method == "lora_shift":
        return lora + len(lin) * (2 * full["shift_dim"] + 2 if full["shift"] == "learned" else 2)
    if method == "nola":
        return (full["num_basis_a"] + full["num_basis_b"]) * len(lin)
    if method == "elalora":
        return sum(full["max_r"] * (d_in + d_out + 1) for _, d_out, d_in in lin)
    if method == "vera":
        return sum(d_out + full["r"] for _, d_out, _ in lin)
    if method == "randlora":
        return sum(math.ceil(min(d_in, d_out) / full["r"]) * (full["r"] + min(d_in, d_out)) for _, d_out, d_in in lin)
    if method == "adalora":
        return sum(full["init_r"] * (d_in + d_out + 1) for _, d_out, d_in in lin)
    if method == "ia3":
        return sum(d_out if name in ("k_proj", "v_proj") else d_in for name, d_out, d_in in lin
                   if name in ("k_proj", "v_proj", "down_proj"))
    if method == "prefix_tuning":
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        return full["num_virtual_tokens"] * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim
    if method == "prompt_tuning":
        return full["num_virtual_tokens"] * cfg.hidden_size
    if method == "adapter":
        return sum(2 * d_out * full["bottleneck"] + full["bottleneck"] + d_out for name, d_out, _ in lin
                   if name in full["target_modules"])
    if method == "bitfit":
        return sum(p.numel() for n, p in base.named_parameters() if n.endswith(".bias"))
    if method == "full":
        return sum(p.numel() for p in base.parameters())
    if method == "none":
        return 0
    raise AssertionError(f"no formula for {method}")


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def perturb(model, seed: int = 1) -> None:
    """Move every trainable tensor off its init, so ΔW ≠ 0 and merge/save checks mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def build(base, method, hp):
    return adapters.apply(copy.deepcopy(base), method, **hp).eval()


def case_id(case) -> str:
    method, hp = case
    return method + "".join(f"-{k}={v}" for k, v in hp.items())


def test_available_lists_every_method():
    assert set(adapters.available()) == ALL_METHODS


@pytest.mark.parametrize("case", CASES + [("prefix_tuning", {}), ("prompt_tuning", {})], ids=case_id)
def test_trainable_count_matches_the_docstring_formula(tiny, case):
    method, hp = case
    assert "Trainable parameters" in adapters.describe(method)
    assert trainable(build(tiny, method, hp)) == expected_trainable(method, hp, tiny)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in NOT_IDENTITY_AT_INIT], ids=case_id)
def test_identity_at_init(tiny, case):
    method, hp = case
    model = build(tiny, method, hp)
    if method == "qlora":  # the reference is the quantised base: LoRA starts at ΔW = 0 on top of it
        with model.disable_adapter():
            reference = logits(model)
        assert not torch.allclose(reference, logits(tiny), atol=1e-3), "NF4 quantisation should change the base"
    else:
        reference = logits(tiny)
    atol = 1e-4 if method == "pissa" else 1e-5  # PiSSA splits W0 by an SVD, exact up to rounding
    torch.testing.assert_close(logits(model), reference, atol=atol, rtol=0)


@pytest.mark.parametrize("method", sorted(NOT_IDENTITY_AT_INIT))
def test_virtual_token_methods_change_the_output_at_init_but_disable_cleanly(tiny, method):
    model = build(tiny, method, {})
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), logits(tiny), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(model)[:, -IDS.shape[1]:], logits(tiny), atol=1e-3)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in NOT_MERGEABLE], ids=case_id)
def test_merge_gives_a_plain_model_with_the_same_logits(tiny, case):
    method, hp = case
    model = build(tiny, method, hp)
    perturb(model)
    adapted = logits(model)
    assert not torch.allclose(adapted, logits(tiny), atol=1e-4), "perturbed adapter should change the output"
    assert_plain_merge(model.merge_and_unload(), tiny, adapted)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in NOT_MERGEABLE | {"qlora", "pissa"}], ids=case_id)
def test_analysis_spectrum_is_that_of_the_merged_update(tiny, case):
    """The diagnostics' ΔW for every layout (peft's LoRA, AdaLoRA's P·Λ·Q, DoRA, VeRA, IA3, ours)
    against the merge's: merged W − W0, module by module. qlora and pissa merge onto another base
    than W0 (NF4 weights; W0's residual) and their layout is LoRA's, checked here under lora."""
    from adapters import analysis

    method, hp = case
    model = build(tiny, method, hp)
    perturb(model)
    reports = analysis.analyze(model)
    assert len(reports) == sum(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in model.modules()) > 0
    weights = dict(model.merge_and_unload().named_parameters())
    base = dict(tiny.named_parameters())
    for report in reports:
        name = report.name.removeprefix("base_model.model.") + ".weight"
        exact = torch.linalg.svdvals((weights[name] - base[name]).double())
        n = min(len(report.spectrum), 8)
        torch.testing.assert_close(report.spectrum[:n].double(), exact[:n], rtol=1e-3, atol=1e-6)
        assert report.stable_rank == pytest.approx(float((exact**2).sum() / exact[0] ** 2), rel=1e-3)


def assert_plain_merge(merged, base, adapted) -> None:
    """`merged` is a plain model of `base`'s class (float nn.Linear layers, no adapter layers, the
    same parameter names) with the logits `adapted`."""
    assert type(merged) is type(base)
    assert not [n for n, m in merged.named_modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]
    assert {type(m) for m in merged.modules() if isinstance(m, torch.nn.Linear)} == {torch.nn.Linear}
    assert {n for n, _ in merged.named_parameters()} == {n for n, _ in base.named_parameters()}
    torch.testing.assert_close(logits(merged), adapted, atol=1e-5, rtol=0)


def test_qlora_loaded_from_disk_merges_too(tiny, tmp_path):
    """The merge goes through our NF4 layer on load as on build (peft would rebuild its plain LoRA layer)."""
    model = build(tiny, "qlora", {})
    perturb(model)
    adapters.save_adapter(model, tmp_path)
    loaded = adapters.load_adapter(copy.deepcopy(tiny), tmp_path)
    assert_plain_merge(loaded.merge_and_unload(), tiny, logits(model))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "none"] + [("prefix_tuning", {}), ("prompt_tuning", {})], ids=case_id)
def test_save_then_load_gives_the_same_logits(tiny, case, tmp_path):
    method, hp = case
    model = build(tiny, method, hp)
    perturb(model)
    adapted = logits(model)
    adapters.save_adapter(model, tmp_path)
    loaded = adapters.load_adapter(copy.deepcopy(tiny), tmp_path)
    torch.testing.assert_close(logits(loaded), adapted, atol=1e-6, rtol=0)


def train(model, method: str, steps: int = 20, lr: float = 1e-2, hp: dict | None = None) -> list[float]:
    """The loop jobs/train.py runs, without DeepSpeed: optimizer and after_backward from adapters."""
    optimizer = adapters.make_optimizer(model, method, lr=lr, weight_decay=0.0, hparams=hp)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        adapters.after_backward(model, method, step, steps)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


FAST_LR = {"ia3", "prefix_tuning", "prompt_tuning"}  # vectors and virtual tokens: the usual 10× larger lr


def eval_loss(model) -> float:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS, labels=IDS).loss.item()


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "none"] + [("prefix_tuning", {}), ("prompt_tuning", {})], ids=case_id)
def test_twenty_steps_lower_the_loss(tiny, case):
    """Eval-mode loss (full rank, no dropout) before and after 20 steps on one batch.

    The margin is small on purpose: paper-exact LR-LoRA barely moves (only a trains at first,
    and the dense offset φ(0) is all it learns early: METHODS.md risks 1–2).
    """
    method, hp = case
    torch.manual_seed(0)  # dropout masks: a reproducible run
    model = build(tiny, method, hp)
    before = eval_loss(model)
    train(model, method, lr=1e-1 if method in FAST_LR else 1e-2, hp=hp)
    assert eval_loss(model) < before - 0.01


def test_bitfit_trains_only_biases_and_lowers_the_loss(biased):
    model = build(biased, "bitfit", {})
    assert trainable(model) == expected_trainable("bitfit", {}, biased) > 0
    assert all(n.endswith(".bias") for n, p in model.named_parameters() if p.requires_grad)
    ids = IDS % 256
    optimizer = adapters.make_optimizer(model, "bitfit", lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 0.05


def test_bitfit_save_then_load(biased, tmp_path):
    model = build(biased, "bitfit", {})
    perturb(model)
    adapters.save_adapter(model, tmp_path)
    loaded = adapters.load_adapter(copy.deepcopy(biased), tmp_path)
    torch.testing.assert_close(logits(loaded, IDS % 256), logits(model, IDS % 256), atol=1e-6, rtol=0)


def test_bitfit_on_a_backbone_without_biases_raises(tiny):
    with pytest.raises(MethodError, match="bitfit.*no bias"):
        adapters.apply(copy.deepcopy(tiny), "bitfit")


def test_unknown_method_raises_one_line_naming_it(tiny):
    with pytest.raises(MethodError, match="unknown method 'lorax'") as err:
        adapters.apply(tiny, "lorax")
    assert "\n" not in str(err.value)


def test_unknown_hyperparameter_raises_one_line_naming_it(tiny):
    with pytest.raises(MethodError, match="'lr_lora' has no hyperparameter 'grid'") as err:
        adapters.apply(tiny, "lr_lora", grid=50)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method, hp, words", [
    ("lora", {"r": 0}, "r must be a positive integer"),
    ("lora_shift", {"shift": "dense"}, "shift must be one of"),
    ("lr_lora", {"scale_position": "middle"}, "scale_position must be one of"),
    ("adalora", {"init_r": 4, "target_r": 8}, "target_r"),
    ("elalora", {"init_r": 8, "max_r": 4}, "init_r"),
])
def test_invalid_hyperparameter_value_raises_naming_it(tiny, method, hp, words):
    with pytest.raises(MethodError, match=words):
        adapters.apply(copy.deepcopy(tiny), method, **hp)


def test_loraplus_optimizer_gives_b_a_larger_learning_rate(tiny):
    model = build(tiny, "loraplus", {})
    optimizer = adapters.make_optimizer(model, "loraplus", lr=1e-4, weight_decay=0.0)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    lrs_b = {lr_of[id(p)] for n, p in model.named_parameters() if "lora_B" in n}
    lrs_a = {lr_of[id(p)] for n, p in model.named_parameters() if "lora_A" in n}
    assert lrs_a == {1e-4} and lrs_b == {1e-4 * 16}


def test_lora_shift_optimizer_doubles_the_shift_learning_rate(tiny):
    model = build(tiny, "lora_shift", {})
    optimizer = adapters.make_optimizer(model, "lora_shift", lr=3e-4, weight_decay=0.0)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {lr_of[id(p)] for n, p in model.named_parameters() if ".lora_shift." in n} == {6e-4}
    assert {lr_of[id(p)] for n, p in model.named_parameters() if "lora_A" in n} == {3e-4}


def test_default_optimizer_is_adamw_over_trainable_parameters(tiny):
    model = build(tiny, "lora", {})
    optimizer = adapters.make_optimizer(model, "lora", lr=1e-3, weight_decay=0.01)
    assert type(optimizer) is torch.optim.AdamW
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable(model)


def test_adalora_ends_training_with_its_target_rank_budget(tiny):
    """The loop's hooks (after_backward, then the optimizer's re-mask) leave exactly the
    budgeted singular values non-zero: init_r = 6 per module pruned to target_r = 2 on average."""
    hp = {"init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1}
    model = build(tiny, "adalora", hp)
    train(model, "adalora", steps=6, hp=hp)
    singular_values = [p for n, p in model.named_parameters() if ".lora_E." in n]
    kept = sum(int(torch.count_nonzero(e)) for e in singular_values)
    assert kept == 2 * len(singular_values)
    assert kept == sum(sum(mask) for mask in model.peft_config["default"].rank_pattern.values())
