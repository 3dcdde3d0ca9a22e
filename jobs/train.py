"""The training recipe: token rows -> a DeepSpeed engine -> a plain loop.

Read it top to bottom: `train` sets up (seed, optimizer, schedule, engine) and then runs one
loop. The rows come from the cell's task family (`Family.encode`); the loop never asks which. The engine is DeepSpeed's on every device (gloo on CPU, NCCL on GPU), so CI
runs the code a cluster runs. `python -m jobs.train CELL.json` runs one whole cell without Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import deepspeed
import torch
from transformers import get_scheduler

import adapters
from jobs import memory
from jobs.contract import IGNORE


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    steps: int = 0
    train_tokens: int = 0  # non-padding tokens seen (prompt and answer)
    seconds: float = 0.0  # wall time of the loop, engine set-up excluded
    resumed_from: int = 0  # the step a checkpoint resumed this run from (0: from the start)
    discarded: list[str] = field(default_factory=list)  # checkpoints not resumed from, and why
    peak_mem_mb: float = 0.0  # the largest of every rank's peak (memory.peak_mb) at the end of the loop

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and loss.

    Causal-LM rows carry per-token `labels`; classification rows (the GLUE family) carry one label
    per row (an int class, or a float score for regression) and may carry `token_type_ids`.
    """
    width = max(len(r["input_ids"]) for r in rows)
    batch = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long)}
    batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
    per_token = isinstance(rows[0]["labels"], list)
    if per_token:
        batch["labels"] = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    else:
        batch["labels"] = torch.tensor([r["labels"] for r in rows])  # long for classes, float for scores
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        batch["attention_mask"][i, :n] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][i, :n] = torch.tensor(r["token_type_ids"])
        if per_token:
            batch["labels"][i, :n] = torch.tensor(r["labels"])
    return batch


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # TrainArgs.precision


def resolved(precision: str) -> str:
    """TrainArgs.precision with `auto` (left only in TrainArgs made outside a Cell) decided here:
    bf16 on a GPU, fp32 on the CPU, as a Cell decides it from its resources."""
    return precision if precision != "auto" else "bf16" if torch.cuda.is_available() else "fp32"


def placement(precision: str) -> tuple[torch.device, torch.dtype]:
    """(this rank's device, the dtype `precision` loads the backbone in): on CUDA the GPU that
    LOCAL_RANK names (the one `init_distributed` binds), with TF32 for float32 matrix products
    (tensor cores; bf16/fp16 runs keep their float32 arithmetic exact); else the CPU."""
    precision = resolved(precision)
    if not torch.cuda.is_available():
        return torch.device("cpu"), DTYPES[precision]
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name()} has no bf16; set train.precision to fp16 or fp32")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "fp32"
    local = int(os.environ.get("LOCAL_RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    return torch.device("cuda", local), DTYPES[precision]


def pad_id(tokenizer) -> int:
    """The id padding is written with: the tokenizer's pad token, else (Llama-3 and others have
    none) its EOS or UNK. Padding is masked out of attention and loss, so any id is exact."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has no pad, EOS or UNK token to pad with")


def deepspeed_config(args, trainable: int) -> dict:
    """DeepSpeed's config for TrainArgs `args`, with `args.deepspeed` merged in last (key by key).

    bf16/fp16 are DeepSpeed's `torch_autocast` section: the frozen backbone is held in that
    dtype, the trainable parameters in float32 (peft's autocast_adapter_dtype; `train` upcasts
    any other), matrix products run in the low dtype under torch.autocast, and fp16 gets
    DeepSpeed's dynamic loss scaling. Not its `bf16`/`fp16` sections: those cast every parameter,
    adapters included, beside adapter buffers left in float32 (peft's VeRA, our shift and φ
    layers then fail on mixed dtypes). Gradients are reduced in float32 (no module listed as
    lower-precision safe). ZeRO's gradient reduce bucket
    (preallocated, 5e8 elements by default: 1.9 GiB in float32) is sized to the trainable
    parameters, so an adapter's peak memory is not mostly an empty bucket."""
    config = {
        "train_micro_batch_size_per_gpu": args.micro_batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "gradient_clipping": args.grad_clip,
        "zero_optimization": {"stage": args.zero_stage},
        "zero_allow_untested_optimizer": True,  # plain torch AdamW: the same optimizer on CPU and GPU
        "steps_per_print": 10**9,
    }
    if args.zero_stage > 0:
        config["zero_optimization"]["reduce_bucket_size"] = max(1, min(int(5e8), trainable))
    if resolved(args.precision) != "fp32":
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[resolved(args.precision)]
        config["torch_autocast"] = {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}
    return _merged(config, args.deepspeed)


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def init_distributed() -> None:
    """Join (or, for a lone process, create) the torch.distributed group DeepSpeed uses.

    A lone process rendezvouses through a fresh file (no TCP port: a port picked free can be
    taken by another process before the store binds it, which killed cells under load).
    Launchers (the scheduler's rank actors, torchrun) set RANK, WORLD_SIZE, MASTER_ADDR/PORT
    for multi-process cells, LOCAL_RANK naming this rank's device among the visible GPUs.
    """
    if torch.distributed.is_initialized():  # a reused worker's earlier cell made it
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # (a lone process may inherit a stale RANK=0)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        store = Path(tempfile.mkdtemp(prefix="peftbench-dist-")) / "store"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, init_method=f"file://{store}", rank=0, world_size=1)
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def train(
    model: torch.nn.Module,
    tokenizer,
    rows: list[dict],
    args,
    seed: int,
    on_step: Callable[[int, float, int, bool], None] | None = None,
    method: str = "none",
    hparams: dict | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train the trainable parameters of `model` on token `rows`; returns (trained model, stats).

    `rows` are what a task family's `encode` returns (`input_ids`, `labels`, maybe
    `token_type_ids`); the model computes the loss from the labels either way.

    `args` is a `jobs.contract.TrainArgs`: lr, epochs or max_steps, micro_batch_size,
    grad_accum, warmup_ratio, lr_scheduler, weight_decay, max_seq_len, zero_stage, grad_clip.
    AdamW with linear warmup then `lr_scheduler` (`schedule`), gradient clipping, everything seeded.
    `on_step(step, loss, total_steps, replayed)` is called after every step; on resume, first
    with `replayed=True` for each step the checkpoint already holds, so the loss curve is whole.
    With `checkpoint_dir`, a checkpoint written there every `checkpoint_every` steps (trainable
    weights, optimizer, schedule, step, RNG) is resumed from, so a killed cell picks up where it
    stopped and ends as an uninterrupted run would.
    """
    seed_everything(seed)
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if len(rows) < args.micro_batch_size * world:
        raise ValueError(f"{len(rows)} training examples cannot fill one micro-batch of {args.micro_batch_size} on {world} ranks")
    per_step = args.micro_batch_size * args.grad_accum * world
    steps = args.max_steps or max(1, len(rows) // per_step) * args.epochs

    if args.gradient_checkpointing:  # non-reentrant: exact gradients for frozen inputs, RNG replayed
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    # The optimizer steps float32 weights (adapters are float32 already); they go back after training
    lowered = [(p, p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32 and resolved(args.precision) != "fp32"]
    for p, _ in lowered:
        p.data = p.data.float()
    # AdamW over the trainable parameters unless the method needs its own (LoRA+ groups, ...)
    optimizer = adapters.make_optimizer(model, method, args.lr, args.weight_decay, hparams)
    schedule = make_schedule(optimizer, args, steps)
    config = deepspeed_config(args, sum(p.numel() for p in model.parameters() if p.requires_grad))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    engine.train()

    result = TrainResult()
    start = result.resumed_from = _resume(engine, checkpoint_dir, result)
    for step, loss in enumerate(result.losses):  # the resumed run's curve is whole
        if on_step:
            on_step(step, loss, steps, True)
    batches = _micro_batches(rows, args.micro_batch_size, rank, world, seed)
    for _ in range(start * args.grad_accum):  # the data order position: skip what was trained on
        next(batches)
    started = time.perf_counter()
    for step in range(start, steps):
        step_loss, step_tokens = 0.0, 0
        for micro in range(args.grad_accum):
            batch = {k: v.to(engine.device) for k, v in collate(next(batches), pad_id(tokenizer)).items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            if micro == args.grad_accum - 1:  # the method's per-step work (AdaLoRA, DyLoRA, ElaLoRA)
                adapters.after_backward(engine.module, method, step, steps)
            engine.step()
            step_loss += loss.item() / args.grad_accum
            step_tokens += int(batch["attention_mask"].sum())
        if world > 1:  # the global batch's loss and tokens, as one process with grad_accum × world sees them
            totals = torch.tensor([step_loss, step_tokens], dtype=torch.float64, device=engine.device)
            torch.distributed.all_reduce(totals)
            step_loss, step_tokens = totals[0].item() / world, int(totals[1].item())
        result.train_tokens += step_tokens
        if not math.isfinite(step_loss):
            raise DivergedError(f"loss is {step_loss} at step {step}")
        result.losses.append(step_loss)
        if on_step:
            on_step(step, step_loss, steps, False)
        if checkpoint_dir and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            _save(engine, checkpoint_dir, step + 1, result)
    result.seconds = time.perf_counter() - started
    result.steps = steps
    peak = torch.tensor([memory.peak_mb()], dtype=torch.float64, device=engine.device)
    if world > 1:  # the cell's peak is its largest rank's
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    result.peak_mem_mb = peak.item()
    model = engine.module.eval()
    engine.destroy()
    for p, dtype in lowered:  # (a head or bias trained in float32) back to the backbone's dtype
        p.data = p.data.to(dtype)
    return model, result


# TrainArgs.lr_scheduler -> transformers' scheduler: each warms up linearly over warmup_ratio of
# the steps, then decays linearly to 0, by a half cosine to 0, or stays at lr.
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def make_schedule(optimizer: torch.optim.Optimizer, args, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule over `steps` optimizer steps that `args` names."""
    warmup = math.ceil(args.warmup_ratio * steps)
    return get_scheduler(SCHEDULERS[args.lr_scheduler], optimizer, num_warmup_steps=warmup, num_training_steps=steps)


MANIFEST = "sha256.json"  # in each checkpoint tag: every file's digest, written once the save is whole


def _digests(tag_dir: Path) -> dict[str, str]:
    return {str(f.relative_to(tag_dir)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(tag_dir.rglob("*")) if f.is_file() and f.name != MANIFEST}


def _save(engine, directory: Path, step: int, result: TrainResult) -> None:
    """Checkpoint the trainable weights (frozen backbone weights excluded), optimizer, schedule,
    progress and RNG under tag `step<N>`, then its manifest of digests (rank 0, after DeepSpeed's
    closing barrier: every rank's files are written); keep only the newest whole one."""
    state = {
        "step": step, "losses": result.losses, "train_tokens": result.train_tokens,
        "python_rng": random.getstate(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    engine.save_checkpoint(str(directory), tag=f"step{step}", client_state=state, exclude_frozen_parameters=True)
    if torch.distributed.get_rank() == 0:
        tag_dir = Path(directory) / f"step{step}"
        partial = tag_dir / f"{MANIFEST}.partial"
        partial.write_text(json.dumps(_digests(tag_dir)))
        os.replace(partial, tag_dir / MANIFEST)  # atomic: a manifest is either whole or absent
        for old in Path(directory).glob("step*"):
            if old.name != f"step{step}":
                shutil.rmtree(old, ignore_errors=True)


def _verified_tag(directory: Path, result: TrainResult) -> str | None:
    """The newest checkpoint tag whose files match its manifest. Checkpoints are unpickled, so
    nothing is loaded that this code did not write whole: a tag cut short, damaged or altered
    is discarded (removed, and noted in `result.discarded`), and training starts from the newest
    good one, or from step 0."""
    tags = sorted(Path(directory).glob("step*"), key=lambda d: int(d.name.removeprefix("step")) if d.name[4:].isdigit() else -1, reverse=True)
    for tag_dir in tags:
        manifest = tag_dir / MANIFEST
        try:
            whole = json.loads(manifest.read_text()) == _digests(tag_dir)
        except (OSError, ValueError):
            whole = False
        if whole:
            return tag_dir.name
        result.discarded.append(f"{tag_dir.name}: {'files differ from its manifest' if manifest.exists() else 'no manifest (save cut short)'}")
        shutil.rmtree(tag_dir, ignore_errors=True)
    return None


def _resume(engine, directory: Path | None, result: TrainResult) -> int:
    """Load the newest whole checkpoint in `directory` into the engine and `result`; return the
    step to continue from (0 when there is none)."""
    if not directory or not Path(directory).is_dir():
        return 0
    tag = _verified_tag(directory, result)
    if tag is None:
        return 0
    # Frozen weights are not in the checkpoint: they come from the backbone, hence not strict.
    _, state = engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
    result.losses, result.train_tokens = list(state["losses"]), state["train_tokens"]
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


def _micro_batches(rows, size: int, rank: int, world: int, seed: int):
    """Endless micro-batches: each epoch a fresh seeded shuffle cut into chunks of `size`;
    rank r takes chunks r, r + world, ... So `world` ranks see together exactly the
    micro-batches one process with `grad_accum × world` sees, and their curves agree."""
    rng = random.Random(seed)
    chunks = len(rows) // (size * world) * world
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for chunk in range(rank, chunks, world):
            yield [rows[j] for j in order[chunk * size : (chunk + 1) * size]]


if __name__ == "__main__":
    import sys

    from jobs.cell import main

    main(sys.argv[1:])
