"""The training loop: plain torch + peft, token-normalised loss, checkpoints, resume and cancel."""

from __future__ import annotations

import gc
import json
import math
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer import distributed
from trainer.batching import Batch, MicroBatch, collate, plan_epoch
from trainer.checkpoint import latest_checkpoint
from trainer.config import LORA_FAMILY, TrainConfig
from trainer.contract import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    LOSS_CURVE_FILE,
    MODEL_DIR,
    PROMPT_FORMAT_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    TRAIN_CONFIG_FILE,
    code_version,
)
from trainer.data import Message, load_dataset
from trainer.formats import (
    FAMILY_TEMPLATES,
    IGNORE_INDEX,
    Encoded,
    PromptFormat,
    TemplateError,
    add_special_tokens,
    build_format,
    choose_kind,
    encode_conversation,
    install_chat_template,
    missing_special_tokens,
    truncate,
)
from trainer.infer import export_merged, generate
from trainer.methods import (
    PRECISION_DTYPES,
    attach_init_adapter,
    bitsandbytes_available,
    build_peft_model,
    detect_linear_targets,
    init_adapter_run_dir,
    is_prompt_learning,
    load_base_model,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_precision,
    save_bitfit,
    save_full_model,
)
from trainer.reporting import Reporter, plot_loss_curve, write_json_atomic


@dataclass
class TrainSummary:
    state: str
    step: int = 0
    max_steps: int = 0
    samples_total: int = 0
    samples_used: int = 0
    samples_train: int = 0
    samples_val: int = 0
    samples_dropped: dict[str, int] = field(default_factory=dict)
    train_tokens: int = 0  # tokens of the training split per epoch (prompt + response)
    train_target_tokens: int = 0  # response tokens the loss sees per epoch
    tokens_seen: int = 0  # real tokens processed by the optimizer steps of this run, all epochs
    train_loss: float | None = None
    eval_loss: float | None = None
    seconds: float = 0.0
    prompt_format: str = ""
    method: str = ""
    packing: bool = False
    resumed_from_step: int | None = None
    code_version: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(self.state, EXIT_FAILED)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --------------------------------------------------------------------------------------------------
# data preparation


@dataclass
class Prepared:
    fmt: PromptFormat
    train: list[Encoded]
    val: list[Encoded]
    val_conversations: list[list[Message]]
    dropped: Counter[str]
    total: int
    added_tokens: list[str]


def prepare_data(config: TrainConfig, tokenizer: Any) -> Prepared:
    data = load_dataset(config.dataset_path)
    # a user's chat_template or a family's built-in one goes onto the tokenizer (and is saved with it)
    requested = install_chat_template(tokenizer, config.prompt_format, config.chat_template)
    kind = choose_kind(requested, tokenizer, single_turn=data.single_turn)
    missing = missing_special_tokens(kind, tokenizer)
    if missing:
        add_special_tokens(tokenizer, missing)
    fmt = build_format(kind, tokenizer, system_prompt=config.system_prompt, added_tokens=tuple(missing))

    order = list(range(len(data.conversations)))
    random.Random(config.seed).shuffle(order)
    n_val = 0
    if config.val_fraction > 0 and len(order) >= 2:
        n_val = max(1, round(len(order) * config.val_fraction))
    val_idx, train_idx = set(order[:n_val]), order[n_val:]

    dropped = Counter(data.dropped)
    train: list[Encoded] = []
    val: list[Encoded] = []
    val_convs: list[list[Message]] = []
    for i in [*train_idx, *sorted(val_idx)]:
        conv = data.conversations[i]
        try:
            enc = truncate(encode_conversation(fmt, tokenizer, conv), config.max_seq_len)
        except TemplateError:
            dropped["template_error"] += 1
            continue
        if enc is None:
            dropped["response_truncated"] += 1
            continue
        if i in val_idx:
            val.append(enc)
            val_convs.append(conv)
        else:
            train.append(enc)
    total = len(data.conversations) + sum(data.dropped.values())
    if not train:
        raise ValueError(f"no usable training samples in {config.dataset_path}: dropped {dict(dropped)}")
    return Prepared(fmt, train, val, val_convs, dropped, total, missing)


def plan_training(
    config: TrainConfig, lengths: list[int], *, packing: bool, ranks: int = 1
) -> tuple[list[MicroBatch], int, float]:
    """(micro-batches in order, optimizer steps, steps per epoch); deterministic from the seed for resume.

    With several ranks a step takes grad_accum micro-batches per rank (trainer/distributed.py shares them).
    """
    rng = random.Random(config.seed + 1)
    accum = config.grad_accum * ranks

    def epoch_plan() -> list[MicroBatch]:
        return plan_epoch(
            lengths,
            batch_size=config.batch_size,
            max_seq_len=config.max_seq_len,
            packing=packing,
            group_by_length=config.group_by_length,
            rng=rng,
        )

    plan = epoch_plan()
    per_epoch = len(plan)
    steps_per_epoch = max(per_epoch / accum, 1e-9)
    by_epochs = max(1, math.ceil(per_epoch * config.epochs / accum))
    total = config.max_steps if config.max_steps > 0 else by_epochs
    while len(plan) < total * accum:
        plan += epoch_plan()
    return plan[: total * accum], total, steps_per_epoch


# --------------------------------------------------------------------------------------------------
# loss


def token_loss_sum(model: Any, batch: Batch, *, full_logits: bool) -> torch.Tensor:
    """Summed cross-entropy over response tokens; labels are unshifted, shifted once here."""
    targets_mask = batch.labels[:, 1:] != IGNORE_INDEX
    targets = batch.labels[:, 1:][targets_mask]
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "use_cache": False}
    if batch.attention_mask is not None:
        kwargs["attention_mask"] = batch.attention_mask
    if batch.position_ids is not None:
        # with no 2D mask, restarting position ids make transformers build the per-sample block mask
        kwargs["position_ids"] = batch.position_ids
    if full_logits:
        logits = model(**kwargs).logits
        seq = batch.input_ids.shape[1]
        logits = logits[:, -seq:][:, :-1][targets_mask]  # prompt tuning prepends virtual tokens
    else:
        # the vocabulary projection only where a target exists: prompts cost no logits memory
        keep = torch.zeros_like(batch.labels, dtype=torch.bool)
        keep[:, :-1] = targets_mask
        logits = model(**kwargs, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def adalora_orth_reg(model: Any) -> torch.Tensor | None:
    """AdaLoRA's orthogonality penalty on P and Q (peft only adds it when the model computes the loss)."""
    cfg = next(iter(model.peft_config.values()))
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.matrix_norm(cov - eye))
    if not terms:
        return None
    weight = float(cfg.orth_reg_weight)
    return weight * torch.stack(terms).mean()


@torch.no_grad()
def evaluate(
    model: Any, examples: list[Encoded], *, batch_size: int, pad_id: int, device: torch.device, amp: Any
) -> float | None:
    if not examples:
        return None
    world = distributed.world()
    examples = examples if distributed.is_sharded(model) else examples[world.rank :: world.size]
    was_training = model.training
    model.eval()
    full = _needs_full_logits(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate(
            examples, [[i] for i in order[start : start + batch_size]], pad_id=pad_id, packed=False
        )
        with amp():
            total += float(token_loss_sum(model, batch.to(device), full_logits=full))
        count += batch.num_targets
    model.train(was_training)
    if world.enabled and not distributed.is_sharded(model):
        total, summed = world.sum(total, count)
        count = int(summed)
    return total / max(count, 1)


def _needs_full_logits(model: Any) -> bool:
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        return False
    return any(getattr(c, "is_prompt_learning", False) for c in cfg.values())


# --------------------------------------------------------------------------------------------------
# optimizer and schedule


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    choice = config.optimizer
    if choice == "auto":
        choice = "paged_adamw_32bit" if config.method == "qlora" else "adamw"
    if choice.startswith("paged"):
        if not bitsandbytes_available():
            raise RuntimeError(f"optimizer {choice} needs CUDA and bitsandbytes")
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if choice.endswith("8bit") else bnb.optim.PagedAdamW32bit
        opt: torch.optim.Optimizer = cls(params, lr=config.lr, weight_decay=config.weight_decay)
        return opt
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total: int) -> Any:
    warmup = int(total * config.warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if config.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------
# main


def main(config: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> TrainSummary:
    """Train, write artifacts into config.output_dir; never raises for a cancel (state="cancelled").

    on_step(step) is called after every optimizer step, before the cancel check (progress hooks).
    Failures write status "failed" with the traceback and re-raise.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    distributed.start()  # one process unless torchrun / accelerate launch started several ranks
    reporter = distributed.reporter_for(out)  # rank 0 writes status and metrics; the others stay quiet
    reporter.status("running", step=0, max_steps=0)
    try:
        if distributed.world().enabled and config.objective != "sft":
            # trainer/preference.py has its own loop, which shares no data and syncs no gradients across ranks
            raise ValueError(f"objective={config.objective} runs as one process; launch it without torchrun")
        return _train(config, reporter, on_step)
    except BaseException:
        previous = _read_status(reporter)
        reporter.status(
            "failed",
            step=int(previous.get("step", 0)),
            max_steps=int(previous.get("max_steps", 0)),
            error=traceback.format_exc(),
        )
        raise
    finally:
        distributed.stop()


def _read_status(reporter: Reporter) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(reporter.status_path.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return {}


class _Loop:
    """Mutable state of one run; kept together so checkpoints and the summary read the same numbers."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.step = 0
        self.tokens_seen = 0
        self.window_loss = 0.0
        self.window_targets = 0
        self.window_tokens = 0
        self.window_start = time.perf_counter()
        self.last_loss: float | None = None
        self.last_eval: float | None = None
        self.loss_scale: float | None = None  # fp16: the GradScaler's scale after the last step


@dataclass
class _Trainee:
    """The model being trained and what updates it; one reference, so a merge can free them all at once."""

    model: Any
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    bf16: bool
    attn_implementation: str
    full_logits: bool
    engine: distributed.Engine  # DDP's wrapper or the FSDP-sharded model; the model itself in one process

    precision: str = "fp32"  # bf16 | fp16 | fp32, from trainer.methods.resolve_precision
    scaler: Any = None  # fp16: a torch.amp.GradScaler, so that small gradients do not underflow to zero

    def amp(self) -> Any:
        dtype = torch.bfloat16 if self.bf16 else (torch.float16 if self.precision == "fp16" else None)
        return (
            torch.autocast(device_type=self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        )


@dataclass
class _Run:
    """What setup hands to the step loop and the finish: the data, its plan, the counters, the summary."""

    config: TrainConfig
    reporter: Reporter
    started: float  # perf_counter at setup: the summary's seconds include loading and writing artifacts
    base_path: Path | str  # a hub id when allow_hub_download
    tokenizer: Any
    prepared: Prepared
    packing: bool
    plan: list[MicroBatch]
    steps_per_epoch: float
    targets: list[str]
    pad_id: int
    loop: _Loop
    summary: TrainSummary  # its notes list is the one setup and the finish append to

    @property
    def out(self) -> Path:
        return self.reporter.output_dir


def _train(config: TrainConfig, reporter: Reporter, on_step: Callable[[int], None] | None) -> TrainSummary:
    if config.objective != "sft":
        from trainer.preference import train_preference  # DPO, ORPO, KTO, SimPO: docs/training.md

        summary: TrainSummary = train_preference(config, reporter, on_step)
        return summary
    run, trainee = _setup(config, reporter)
    if not _run_steps(run, trainee, on_step):
        return _summarise(run, "cancelled")
    _write_artifacts(run, trainee)
    # the last reference: the trained model and its optimizer leave memory before a merge loads the base again
    del trainee
    return _succeed(run)


def _setup(config: TrainConfig, reporter: Reporter) -> tuple[_Run, _Trainee]:
    """Data, plan, model and optimizer, the resolved config on disk, the resume point; then status "running"."""
    started = time.perf_counter()
    out = reporter.output_dir
    _seed_everything(config.seed)
    notes: list[str] = []

    base_path = config.resolved_base_model()
    earlier = init_adapter_run_dir(config.init_adapter) if config.init_adapter else None
    if earlier is not None:
        # continuing an earlier run: its tokenizer (tokens it added) and, unless set, its prompt format
        tokenizer = load_tokenizer(earlier, local_only=True, trust_remote_code=config.trust_remote_code)
        if config.prompt_format == "auto":
            config = config.model_copy(
                update={"prompt_format": PromptFormat.load(earlier / PROMPT_FORMAT_FILE).kind}
            )
        notes.append(f"continued from the adapter of {earlier} ({config.prompt_format} prompt format)")
    else:
        tokenizer = load_tokenizer(
            base_path, local_only=not config.allow_hub_download, trust_remote_code=config.trust_remote_code
        )
    prepared = prepare_data(config, tokenizer)

    packing = config.packing
    if packing and is_prompt_learning(config.method):
        packing = False
        notes.append(f"packing disabled: {config.method} tuning prepends virtual tokens to every row")
    world = distributed.world()
    plan, total, steps_per_epoch = plan_training(
        config, [len(e.input_ids) for e in prepared.train], packing=packing, ranks=world.size
    )
    if world.enabled:
        notes.append(distributed.describe(config, world))
    trainee = _build_trainee(config, base_path, tokenizer, prepared, total=total, notes=notes)
    targets = config.target_modules or (
        detect_linear_targets(trainee.model) if config.method in LORA_FAMILY | {"bitfit"} else []
    )
    if world.is_main:
        write_resolved_config(
            config,
            out,
            base_path=base_path,
            fmt=prepared.fmt,
            packing=packing,
            precision=trainee.precision,
            attn_implementation=trainee.attn_implementation,
            targets=targets,
        )
        tokenizer.save_pretrained(str(out))

    loop = _Loop(total)
    resumed_from = _resume(config, reporter, trainee, loop, notes)
    summary = TrainSummary(
        state="running",
        max_steps=total,
        samples_total=prepared.total,
        samples_used=len(prepared.train) + len(prepared.val),
        samples_train=len(prepared.train),
        samples_val=len(prepared.val),
        samples_dropped=dict(prepared.dropped),
        train_tokens=sum(len(e.input_ids) for e in prepared.train),
        train_target_tokens=sum(e.num_trained() for e in prepared.train),
        prompt_format=prepared.fmt.kind,
        method=config.method,
        packing=packing,
        resumed_from_step=resumed_from,
        code_version=code_version(),
        notes=notes,
    )
    run = _Run(
        config=config,
        reporter=reporter,
        started=started,
        base_path=base_path,
        tokenizer=tokenizer,
        prepared=prepared,
        packing=packing,
        plan=plan,
        steps_per_epoch=steps_per_epoch,
        targets=targets,
        pad_id=int(tokenizer.pad_token_id),
        loop=loop,
        summary=summary,
    )
    trainee.model.train()
    reporter.status("running", step=loop.step, max_steps=total)
    return run, trainee


def _build_trainee(
    config: TrainConfig,
    base_path: Path | str,
    tokenizer: Any,
    prepared: Prepared,
    *,
    total: int,
    notes: list[str],
) -> _Trainee:
    """The base on its device wrapped in the PEFT method, fp32 trainable weights, optimizer and schedule."""
    device = distributed.world().device
    precision = resolve_precision(config)
    bf16 = precision == "bf16"
    dtype = PRECISION_DTYPES[precision]
    if precision == "fp16":
        notes.append("fp16 mixed precision with dynamic loss scaling (no bf16 on this device)")
    attn = resolve_attn_implementation(config.attn_implementation)
    if config.method == "qlora" and not bitsandbytes_available():
        raise RuntimeError("method=qlora needs a CUDA GPU and the bitsandbytes package (4-bit NF4 weights)")
    model = load_base_model(
        base_path,
        dtype=dtype,
        attn_implementation=attn,
        quantize_4bit=config.method == "qlora",
        local_only=not config.allow_hub_download,
        rope_scaling=config.rope_scaling.model_dump() if config.rope_scaling else None,
        trust_remote_code=config.trust_remote_code,
    )
    if config.method != "qlora":
        model.to(device)
    if prepared.added_tokens or model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        # the second case: an earlier run's tokenizer with the tokens it added (init_adapter)
        model.resize_token_embeddings(len(tokenizer))
        if prepared.added_tokens:
            notes.append(f"added special tokens {prepared.added_tokens}; embeddings resized and saved")
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.seed)
    if config.init_adapter:
        model = attach_init_adapter(model, config)
    else:
        model = build_peft_model(model, config, total_steps=total, new_tokens=bool(prepared.added_tokens))
    if config.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if precision != "fp32":
        # master copies of the trainable weights in fp32; autocast runs the matmuls in 16 bits
        for p in trainable:
            p.data = p.data.float()
    engine = distributed.wrap(
        model, parallelism=config.parallelism, cpu_offload=config.fsdp_cpu_offload, mixed_bf16=bf16
    )
    if engine.sharded:
        trainable = [p for p in model.parameters() if p.requires_grad]  # now this rank's shards
    optimizer = make_optimizer(config, trainable)
    return _Trainee(
        model=model,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, total),
        device=device,
        bf16=bf16,
        attn_implementation=attn,
        full_logits=_needs_full_logits(model),
        precision=precision,
        scaler=torch.amp.GradScaler(device.type) if precision == "fp16" else None,
        engine=engine,
    )


def write_resolved_config(
    config: TrainConfig,
    out: Path,
    *,
    base_path: Path | str,
    fmt: PromptFormat,
    packing: bool,
    precision: str,
    attn_implementation: str,
    targets: list[str],
) -> None:
    """The config as it ran (absolute base, detected targets, chosen format...) and the prompt format; SFT
    and preference runs write it alike, so either runs again from its train_config.yaml as it ran."""
    resolved = config.model_copy(
        update={
            "base_model": str(base_path),
            "prompt_format": fmt.kind,
            # the template itself (a user's or a family's): the resolved config runs again as it ran
            "chat_template": fmt.chat_template
            if config.chat_template or config.prompt_format in FAMILY_TEMPLATES
            else None,
            "packing": packing,
            "bf16": precision == "bf16",
            "precision": precision,
            "attn_implementation": attn_implementation,
            "target_modules": targets or None,
            "optimizer": config.optimizer
            if config.optimizer != "auto"
            else ("paged_adamw_32bit" if config.method == "qlora" else "adamw"),
        }
    )
    resolved.to_yaml(out / TRAIN_CONFIG_FILE)
    fmt.save(out / PROMPT_FORMAT_FILE)


def _resume(
    config: TrainConfig, reporter: Reporter, trainee: _Trainee, loop: _Loop, notes: list[str]
) -> int | None:
    """Load the newest checkpoint into the trainee and the counters; the step resumed from, or None."""
    ckpt = latest_checkpoint(reporter.output_dir / CHECKPOINTS_DIR) if config.resume else None
    if ckpt is None:
        reporter.reset_metrics(keep_up_to_step=0)
        return None
    state = distributed.load_checkpoint(
        ckpt,
        engine=trainee.engine,
        model=trainee.model,
        optimizer=trainee.optimizer,
        scheduler=trainee.scheduler,
        micro_batches_per_step=config.grad_accum * trainee.engine.world.size,
    )
    loop.step = int(state["step"])
    loop.tokens_seen = int(state.get("tokens_seen", 0))
    reporter.reset_metrics(keep_up_to_step=loop.step)
    notes.append(f"resumed from checkpoint step {loop.step}")
    return loop.step


def _save_checkpoint(run: _Run, trainee: _Trainee) -> None:
    distributed.save_checkpoint(
        run.out / CHECKPOINTS_DIR,
        engine=trainee.engine,
        step=run.loop.step,
        model=trainee.model,
        optimizer=trainee.optimizer,
        scheduler=trainee.scheduler,
        extra={
            "tokens_seen": run.loop.tokens_seen,
            "max_steps": run.loop.total,
            # the plan's position is step x this: a resume must take as many micro-batches per step
            distributed.MICRO_BATCHES_PER_STEP: run.config.grad_accum * trainee.engine.world.size,
        },
        keep=run.config.save_total_limit,
    )


def _run_steps(run: _Run, trainee: _Trainee, on_step: Callable[[int], None] | None) -> bool:
    """Optimizer steps from the resume point to the last; False when a cancel stopped them (checkpoint saved)."""
    config, loop, reporter = run.config, run.loop, run.reporter
    # a step's global batch: grad_accum micro-batches for each rank (_optimizer_step takes this rank's share)
    step_size = config.grad_accum * distributed.world().size
    for micro in _step_batches(run.plan, step_size, start_step=loop.step):
        if distributed.world().from_main(reporter.cancel_requested()):
            _save_checkpoint(run, trainee)
            reporter.status("cancelled", step=loop.step, max_steps=loop.total)
            return False
        lr, grad_norm = _optimizer_step(run, trainee, micro)
        last = loop.step == loop.total
        do_eval = bool(run.prepared.val) and (
            last or (config.eval_steps > 0 and loop.step % config.eval_steps == 0)
        )
        if do_eval:
            loop.last_eval = evaluate(
                trainee.model,
                run.prepared.val,
                batch_size=config.batch_size,
                pad_id=run.pad_id,
                device=trainee.device,
                amp=trainee.amp,
            )
        if last or do_eval or loop.step % config.logging_steps == 0:
            _log(reporter, loop, run.steps_per_epoch, lr=lr, grad_norm=grad_norm, eval_loss=do_eval)
        if config.save_steps > 0 and loop.step % config.save_steps == 0 and not last:
            _save_checkpoint(run, trainee)
        reporter.status("running", step=loop.step, max_steps=loop.total)
        if on_step is not None:
            on_step(loop.step)
    return True


def _optimizer_step(run: _Run, trainee: _Trainee, micro: list[MicroBatch]) -> tuple[float, float]:
    """One optimizer step over its micro-batches, counters advanced; (learning rate it used, gradient norm)."""
    loop, model, engine = run.loop, trainee.model, trainee.engine
    is_adalora = run.config.method == "adalora"
    micro = engine.world.share(micro)  # this rank's grad_accum micro-batches of the step's global batch
    batches = [collate(run.prepared.train, mb, pad_id=run.pad_id, packed=run.packing) for mb in micro]
    local_targets = sum(b.num_targets for b in batches)
    local_real = sum(b.num_real_tokens for b in batches)
    global_targets, global_real = engine.world.sum(local_targets, local_real)
    n_targets = max(1, int(global_targets))
    step_loss = 0.0
    for i, batch in enumerate(batches):
        # DDP: the gradient all-reduce waits for the step's last micro-batch
        with engine.accumulate(last=i == len(batches) - 1):
            with trainee.amp():
                # dividing by the whole step's target count (all ranks) makes every response token weigh the
                # same, however the tokens fall across micro-batches and ranks
                loss = (
                    token_loss_sum(
                        engine.train_model, batch.to(trainee.device), full_logits=trainee.full_logits
                    )
                    / n_targets
                )
                step_loss += float(loss.detach())
                loss = loss * engine.loss_scale()  # the ranks' gradients are averaged: make it their sum
                if is_adalora and i == 0:
                    reg = adalora_orth_reg(model)
                    if reg is not None:
                        loss = loss + reg
            (loss if trainee.scaler is None else trainee.scaler.scale(loss)).backward()
    (step_loss,) = engine.world.sum(step_loss)
    if trainee.scaler is not None:
        trainee.scaler.unscale_(trainee.optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainee.trainable, run.config.max_grad_norm))
    lr = float(trainee.scheduler.get_last_lr()[0])
    if trainee.scaler is not None:
        # a step whose gradients overflowed (inf/nan) is skipped and the scale halved
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
        loop.loss_scale = float(trainee.scaler.get_scale())
    else:
        trainee.optimizer.step()
    trainee.scheduler.step()
    if is_adalora:
        model.base_model.update_and_allocate(loop.step)
    trainee.optimizer.zero_grad(set_to_none=True)

    loop.step += 1
    real = int(global_real)
    loop.tokens_seen += real
    loop.window_tokens += real
    loop.window_loss += step_loss * n_targets
    loop.window_targets += n_targets
    loop.last_loss = step_loss
    return lr, grad_norm


def _write_artifacts(run: _Run, trainee: _Trainee) -> None:
    """Adapter, held-out samples and the loss curve of a run that reached its last step (rank 0 writes)."""
    engine = trainee.engine
    main_rank = engine.world.is_main
    if engine.sharded:
        # every rank takes part in gathering the shards and in each generation forward; rank 0 writes
        state = distributed.full_state(trainee.model, trainable_only=True)  # full fine-tuning: every weight
        if main_rank:
            _save_adapter(
                trainee.model,
                run.config,
                run.out,
                base_path=str(run.base_path),
                targets=run.targets,
                state=state,
            )
    elif main_rank:
        _save_adapter(trainee.model, run.config, run.out, base_path=str(run.base_path), targets=run.targets)
    if main_rank or engine.sharded:
        _write_samples(
            trainee.model,
            run.tokenizer,
            run.prepared.fmt,
            run.prepared.val_conversations,
            run.config,
            run.out if main_rank else None,
            run.summary.notes,
            step=run.loop.step,
        )
    if main_rank:
        plot_loss_curve(run.reporter.read_metrics(), run.out / LOSS_CURVE_FILE)
    engine.world.barrier()  # no rank reports success before the artifacts are on disk


def _succeed(run: _Run) -> TrainSummary:
    if run.config.merge and distributed.world().is_main:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        export_merged(run.out)
    run.reporter.status("succeeded", step=run.loop.step, max_steps=run.loop.total)
    return _summarise(run, "succeeded")


def _summarise(run: _Run, state: str) -> TrainSummary:
    summary, loop = run.summary, run.loop
    summary.state = state
    summary.step = loop.step
    summary.tokens_seen = loop.tokens_seen
    summary.train_loss = loop.last_loss
    summary.eval_loss = loop.last_eval
    summary.seconds = round(time.perf_counter() - run.started, 3)
    if distributed.world().is_main:
        write_json_atomic(run.out / SUMMARY_FILE, summary.to_dict())
    return summary


def _step_batches(plan: list[MicroBatch], grad_accum: int, *, start_step: int) -> Iterator[list[MicroBatch]]:
    for start in range(start_step * grad_accum, len(plan), grad_accum):
        yield plan[start : start + grad_accum]


def _log(
    reporter: Reporter, loop: _Loop, steps_per_epoch: float, *, lr: float, grad_norm: float, eval_loss: bool
) -> None:
    now = time.perf_counter()
    elapsed = max(now - loop.window_start, 1e-9)
    row: dict[str, Any] = {
        "step": loop.step,
        "epoch": round(loop.step / steps_per_epoch, 4),
        "loss": loop.window_loss / max(loop.window_targets, 1),
        "learning_rate": lr,
        "grad_norm": grad_norm if math.isfinite(grad_norm) else None,  # an fp16 step that overflowed
        "tokens_per_s": loop.window_tokens / elapsed,
        "tokens": loop.window_tokens,  # real (non-padding) tokens since the previous line
        "timestamp": time.time(),
    }
    if loop.loss_scale is not None:
        row["loss_scale"] = loop.loss_scale
    if eval_loss:
        row["eval_loss"] = loop.last_eval
    reporter.metrics(row)
    loop.window_loss, loop.window_targets, loop.window_tokens = 0.0, 0, 0
    loop.window_start = now


def _save_adapter(
    model: Any,
    config: TrainConfig,
    out: Path,
    *,
    base_path: str,
    targets: list[str],
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """`state`: the whole weights gathered from FSDP shards (trainer/distributed.py), else read from the model."""
    adapter_dir = out / ADAPTER_DIR
    if config.method == "full":
        save_full_model(model, out / MODEL_DIR, tokenizer_dir=out, state=state)
        return
    if config.method == "bitfit":
        save_bitfit(model, adapter_dir, base_model=base_path, targets=targets)
        return
    if state is not None:
        model.save_pretrained(str(adapter_dir), safe_serialization=True, state_dict=state)
        return
    model.save_pretrained(str(adapter_dir), safe_serialization=True)


def _write_samples(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    conversations: list[list[Message]],
    config: TrainConfig,
    out: Path | None,
    notes: list[str],
    *,
    step: int,
) -> None:
    """One line per held-out prompt: the step the weights are from, prompt, reference and generation.

    out=None: generate without writing (an FSDP rank other than 0 joins each forward's all-gather).
    """
    path = out / SAMPLES_FILE if out is not None else None
    if config.sample_prompts == 0 or not conversations:
        if not conversations and config.sample_prompts:
            notes.append("no held-out samples to generate from (val_fraction=0 or too little data)")
        if path is not None:
            path.write_text("", encoding="utf-8")
        return
    prompts: list[list[Message]] = []
    references: list[str] = []
    for conv in conversations[: config.sample_prompts]:
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        prompts.append(conv[:last])
        references.append(conv[last]["content"])
    outputs = generate(model, tokenizer, fmt, prompts, max_new_tokens=config.sample_max_new_tokens)
    if path is None:
        return
    with path.open("w", encoding="utf-8") as fh:
        for prompt, ref, gen in zip(prompts, references, outputs, strict=True):
            line = {"step": step, "prompt": prompt, "reference": ref, "generation": gen}
            fh.write(json.dumps(line, ensure_ascii=False))
            fh.write("\n")
