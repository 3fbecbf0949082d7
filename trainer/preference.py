"""Preference training on our own loop: DPO, ORPO, KTO and SimPO.

Why not TRL's trainers: they bring their own tokenization (a chat template applied to strings), batching and
checkpoints, so a preference run would not see the prompt tokens, response-only masks and end-of-turn tokens
an SFT run of the same data sees (trainer/formats.py), nor honour our cancel file, resume and metrics files.
So the data goes through the SFT encoder, and only the losses are the papers' (and TRL's: the test
tests/trainer/test_preference.py computes TRL's losses on the same batch and the same model and compares).

Encoding. A pair is (prompt turns, chosen reply, rejected reply). Each side is encoded as the SFT conversation
prompt + [reply]; the prompt's tokens (earlier assistant turns included) are masked out, so only the final reply
and its end-of-turn token are scored. The prompt tokens are checked to be a prefix of both sides, so chosen
and rejected are conditioned on exactly the same tokens.

The reference model costs no second copy: its sequence log-probs are computed once, before training, with the
same weights in eval mode (`reference_logps`): for a fresh adapter the base with the adapter disabled (peft's
`disable_adapter()`), for a run that starts from an SFT adapter (`init_adapter`) that adapter as loaded, before
the first update. Computing them once, rather than a second forward per step, costs one forward pass over the
data instead of one per epoch, and is the only way when the reference is the SFT adapter being trained.
ORPO and SimPO need no reference.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.batching import Batch, MicroBatch, collate
from trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import LORA_FAMILY, TrainConfig
from trainer.contract import (
    CHECKPOINTS_DIR,
    LOSS_CURVE_FILE,
    PROMPT_FORMAT_FILE,
    SUMMARY_FILE,
    code_version,
)
from trainer.data import Message
from trainer.formats import (
    IGNORE_INDEX,
    Encoded,
    PromptFormat,
    TemplateError,
    add_special_tokens,
    build_format,
    choose_kind,
    encode_conversation,
    encode_prompt,
    install_chat_template,
    missing_special_tokens,
    truncate,
)
from trainer.methods import (
    attach_init_adapter,
    bitsandbytes_available,
    build_peft_model,
    detect_linear_targets,
    init_adapter_run_dir,
    load_base_model,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_precision,
    use_bf16,
)
from trainer.reporting import Reporter, plot_loss_curve, write_json_atomic

PAIRED_OBJECTIVES = frozenset({"dpo", "orpo", "simpo"})
REFERENCE_OBJECTIVES = frozenset({"dpo", "kto"})
# Sequence scores as the papers define them: DPO/KTO sum the reply's token log-probs; ORPO and SimPO average
# them (length-normalised, see pair_batch_loss), which is also what lets them work without a reference.

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


# --------------------------------------------------------------------------------------------------
# reading


@dataclass
class PairRow:
    prompt: list[Message]
    chosen: str
    rejected: str


@dataclass
class UnpairedRow:
    prompt: list[Message]
    completion: str
    desirable: bool


@dataclass
class PreferenceData:
    pairs: list[PairRow]
    unpaired: list[UnpairedRow]
    dropped: Counter[str] = field(default_factory=Counter)
    total: int = 0


def _messages(raw: Any) -> list[Message] | None:
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        return None
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict):
            return None
        role = _ROLES.get(str(m.get("role", m.get("from", ""))).lower())
        content = m.get("content", m.get("value"))
        if role is None or not isinstance(content, str):
            return None
        out.append({"role": role, "content": content})
    return out


def _reply(raw: Any) -> str | None:
    """A completion: plain text, or a list whose last message is the assistant's."""
    if isinstance(raw, str):
        return raw
    msgs = _messages(raw)
    if not msgs or msgs[-1]["role"] != "assistant":
        return None
    return msgs[-1]["content"]


def _implicit_prompt(chosen: Any, rejected: Any) -> tuple[list[Message], str, str] | None:
    """TRL's implicit-prompt rows (Anthropic HH as messages): two full conversations that share their turns up
    to the last reply; the shared turns are the prompt."""
    c, r = _messages(chosen), _messages(rejected)
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return None
    if c[:-1] != r[:-1] or not c[:-1]:
        return None
    return c[:-1], c[-1]["content"], r[-1]["content"]


def parse_row(record: Any) -> PairRow | UnpairedRow | str:
    """One JSON record as a pair or an unpaired (KTO) row, or the reason it is dropped."""
    if not isinstance(record, dict):
        return "invalid_record"
    if "chosen" in record and "rejected" in record:
        if "prompt" in record:
            prompt = _messages(record["prompt"])
            chosen, rejected = _reply(record["chosen"]), _reply(record["rejected"])
            if prompt is None or chosen is None or rejected is None:
                return "invalid_record"
        else:
            implicit = _implicit_prompt(record["chosen"], record["rejected"])
            if implicit is None:
                return "invalid_record"
            prompt, chosen, rejected = implicit
        if not prompt or prompt[-1]["role"] == "assistant":
            return "invalid_record"
        if not chosen.strip() or not rejected.strip():
            return "empty_response"
        if chosen == rejected:
            return "identical_pair"
        return PairRow(prompt, chosen, rejected)
    if "completion" in record and "label" in record:
        prompt = _messages(record.get("prompt"))
        completion = _reply(record["completion"])
        label = record["label"]
        if prompt is None or completion is None or not isinstance(label, bool) or not prompt:
            return "invalid_record"
        if not completion.strip():
            return "empty_response"
        return UnpairedRow(prompt, completion, label)
    return "invalid_record"


def load_preference_data(path: str | Path) -> PreferenceData:
    """JSONL (or a JSON array) of {prompt, chosen, rejected} pairs, plain text or messages, and for KTO
    {prompt, completion, label} rows; what cannot be read is counted by reason, never fatal."""
    text = Path(path).read_text(encoding="utf-8")
    records: list[Any]
    if text.lstrip().startswith("["):
        loaded = json.loads(text)
        records = loaded if isinstance(loaded, list) else [loaded]
    else:
        records = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append(None)
    data = PreferenceData(pairs=[], unpaired=[], total=len(records))
    for record in records:
        row = parse_row(record)
        if isinstance(row, PairRow):
            data.pairs.append(row)
        elif isinstance(row, UnpairedRow):
            data.unpaired.append(row)
        else:
            data.dropped[row] += 1
    return data


# --------------------------------------------------------------------------------------------------
# encoding


@dataclass
class PairExample:
    chosen: Encoded
    rejected: Encoded
    prompt: list[Message]
    chosen_text: str


@dataclass
class KTOExample:
    encoded: Encoded
    prompt_len: int
    desirable: bool
    kl: Encoded | None = None  # this prompt with another example's completion (the KL estimate)
    conversation: list[Message] = field(default_factory=list)  # prompt + completion, for sample generations


def encode_reply(fmt: PromptFormat, tokenizer: Any, prompt: list[Message], reply: str) -> tuple[Encoded, int]:
    """prompt + reply as SFT encodes it, with every prompt token (earlier replies too) masked; and the prompt
    length. Raises TemplateError when the prompt's tokens are not a prefix of the conversation's."""
    prompt_ids = encode_prompt(fmt, tokenizer, prompt)
    full = encode_conversation(fmt, tokenizer, [*prompt, {"role": "assistant", "content": reply}])
    n = len(prompt_ids)
    if full.input_ids[:n] != prompt_ids:
        raise TemplateError(
            "the prompt's tokens differ inside the conversation: chosen and rejected would differ"
        )
    labels = [IGNORE_INDEX] * n + full.labels[n:]
    return Encoded(full.input_ids, labels), n


def encode_pair(fmt: PromptFormat, tokenizer: Any, row: PairRow, max_len: int) -> PairExample | str:
    try:
        chosen, _ = encode_reply(fmt, tokenizer, row.prompt, row.chosen)
        rejected, _ = encode_reply(fmt, tokenizer, row.prompt, row.rejected)
    except TemplateError:
        return "template_error"
    c, r = truncate(chosen, max_len), truncate(rejected, max_len)
    if c is None or r is None:
        return "response_truncated"
    return PairExample(c, r, row.prompt, row.chosen)


def encode_unpaired(fmt: PromptFormat, tokenizer: Any, row: UnpairedRow, max_len: int) -> KTOExample | str:
    try:
        enc, n = encode_reply(fmt, tokenizer, row.prompt, row.completion)
    except TemplateError:
        return "template_error"
    kept = truncate(enc, max_len)
    if kept is None:
        return "response_truncated"
    conversation: list[Message] = [*row.prompt, {"role": "assistant", "content": row.completion}]
    return KTOExample(kept, n, row.desirable, conversation=conversation)


def attach_kl_examples(examples: list[KTOExample], group: int, max_len: int) -> None:
    """KTO's KL estimate pairs each prompt with another example's completion. As TRL does, completions are
    rotated by one inside consecutive groups of `group` examples: (x1, yn), (x2, y1), ..., (xn, yn-1). Fixed
    here, before training, so the reference's log-probs of these mismatched pairs can be computed once."""
    for start in range(0, len(examples), group):
        chunk = examples[start : start + group]
        for i, ex in enumerate(chunk):
            other = chunk[i - 1]  # i == 0 takes the last one
            ids = ex.encoded.input_ids[: ex.prompt_len] + other.encoded.input_ids[other.prompt_len :]
            labels = [IGNORE_INDEX] * ex.prompt_len + other.encoded.labels[other.prompt_len :]
            kl = truncate(Encoded(ids, labels), max_len)
            # a prompt so long that no completion token fits: the example's own tokens stand in
            ex.kl = kl if kl is not None else ex.encoded


# --------------------------------------------------------------------------------------------------
# log-probs and losses


def sequence_logps(model: Any, batch: Batch, *, full_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's target tokens, number of target tokens per row); labels are unshifted.

    Like the SFT loss, the vocabulary projection is only computed where a target exists."""
    targets_mask = batch.labels[:, 1:] != IGNORE_INDEX
    targets = batch.labels[:, 1:][targets_mask]
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "use_cache": False}
    if batch.attention_mask is not None:
        kwargs["attention_mask"] = batch.attention_mask
    if full_logits:
        logits = model(**kwargs).logits
        seq = batch.input_ids.shape[1]
        logits = logits[:, -seq:][:, :-1][targets_mask]
    else:
        keep = torch.zeros_like(batch.labels, dtype=torch.bool)
        keep[:, :-1] = targets_mask
        logits = model(**kwargs, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")
    rows = targets_mask.nonzero()[:, 0]
    sums = torch.zeros(batch.input_ids.shape[0], device=token_logps.device, dtype=token_logps.dtype)
    sums = sums.index_add(0, rows, token_logps)
    return sums, targets_mask.sum(dim=1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class PairLoss:
    losses: torch.Tensor  # per pair (ORPO: the odds-ratio part only; its SFT part is in `nll_sum`)
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    nll_sum: torch.Tensor | None = None  # ORPO: summed NLL of the chosen tokens


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> PairLoss:
    """DPO (Rafailov et al. 2023, eq. 7); label_smoothing > 0 is conservative DPO (cDPO)."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    logits = chosen_ratio - rejected_ratio
    losses = (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    )
    return PairLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo_loss(
    chosen_avg: torch.Tensor,
    rejected_avg: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> PairLoss:
    """SimPO (Meng et al. 2024, eq. 6): length-averaged log-probs, a target margin gamma, no reference."""
    logits = (chosen_avg - rejected_avg) - gamma / beta
    losses = (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    )
    return PairLoss(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())


def orpo_loss(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, *, lam: float) -> PairLoss:
    """ORPO's odds-ratio term (Hong et al. 2024, eqs. 4-7) on length-averaged log-probs; the caller adds
    the chosen replies' NLL. The returned losses are -lam * log sigmoid(log odds ratio)."""
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    losses = -lam * F.logsigmoid(log_odds)
    return PairLoss(losses, lam * chosen_avg.detach(), lam * rejected_avg.detach())


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, eq. 7): (weighted loss per example, reward per example). `kl` is the
    batch's detached, clamped estimate of KL(policy || reference) from mismatched prompt/completion pairs."""
    ratio = logps - ref_logps
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))),
    )
    return losses, beta * ratio.detach()


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class PreparedPreferences:
    fmt: PromptFormat
    train_pairs: list[PairExample]
    val_pairs: list[PairExample]
    train_kto: list[KTOExample]
    val_kto: list[KTOExample]
    dropped: Counter[str]
    total: int
    added_tokens: list[str]

    def lengths(self, objective: str) -> list[int]:
        if objective == "kto":
            return [len(e.encoded.input_ids) for e in self.train_kto]
        return [len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in self.train_pairs]

    def n_train(self, objective: str) -> int:
        return len(self.train_kto) if objective == "kto" else len(self.train_pairs)


def _split(n: int, config: TrainConfig) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(config.seed).shuffle(order)
    n_val = max(1, round(n * config.val_fraction)) if config.val_fraction > 0 and n >= 2 else 0
    return order[n_val:], sorted(order[:n_val])


def prepare_preference_data(
    config: TrainConfig, tokenizer: Any, fmt: PromptFormat | None = None
) -> PreparedPreferences:
    """Read, split (by pair: both sides of a pair stay on one side of the split) and encode."""
    data = load_preference_data(config.dataset_path)
    dropped = Counter(data.dropped)
    added: list[str] = []
    if fmt is None:
        prompts = [r.prompt for r in data.pairs] + [r.prompt for r in data.unpaired]
        single = not any(m["role"] == "assistant" for prompt in prompts for m in prompt)
        # a user's chat_template or a family's built-in one goes onto the tokenizer, exactly as for SFT
        requested = install_chat_template(tokenizer, config.prompt_format, config.chat_template)
        kind = choose_kind(requested, tokenizer, single_turn=single)
        added = missing_special_tokens(kind, tokenizer)
        if added:
            add_special_tokens(tokenizer, added)
        fmt = build_format(kind, tokenizer, system_prompt=config.system_prompt, added_tokens=tuple(added))
    out = PreparedPreferences(fmt, [], [], [], [], dropped, data.total, added)

    if config.objective in PAIRED_OBJECTIVES:
        if data.unpaired:
            dropped["unpaired_row"] += len(data.unpaired)
        if not data.pairs:
            raise ValueError(
                f"objective={config.objective} needs prompt/chosen/rejected pairs and {config.dataset_path} has "
                f"none (dropped {dict(dropped)})"
            )
        train_idx, val_idx = _split(len(data.pairs), config)
        for idx, target in ((train_idx, out.train_pairs), (val_idx, out.val_pairs)):
            for i in idx:
                ex = encode_pair(fmt, tokenizer, data.pairs[i], config.max_seq_len)
                if isinstance(ex, str):
                    dropped[ex] += 1
                else:
                    target.append(ex)
        if not out.train_pairs:
            raise ValueError(f"no usable preference pairs in {config.dataset_path}: dropped {dict(dropped)}")
        return out

    # kto: unpaired rows as they are, and each pair as one desirable and one undesirable completion
    rows = list(data.unpaired)
    for p in data.pairs:
        rows += [UnpairedRow(p.prompt, p.chosen, True), UnpairedRow(p.prompt, p.rejected, False)]
    if not rows:
        raise ValueError(
            f"objective=kto needs prompt/completion/label rows or pairs; {config.dataset_path} has none "
            f"(dropped {dict(dropped)})"
        )
    train_idx, val_idx = _split(len(rows), config)
    for idx, kto_target in ((train_idx, out.train_kto), (val_idx, out.val_kto)):
        for i in idx:
            kex = encode_unpaired(fmt, tokenizer, rows[i], config.max_seq_len)
            if isinstance(kex, str):
                dropped[kex] += 1
            else:
                kto_target.append(kex)
    if not out.train_kto:
        raise ValueError(f"no usable KTO rows in {config.dataset_path}: dropped {dict(dropped)}")
    labels = {e.desirable for e in out.train_kto}
    if labels != {True, False}:
        raise ValueError("objective=kto needs both desirable (label true) and undesirable (label false) rows")
    attach_kl_examples(out.train_kto, config.batch_size, config.max_seq_len)
    attach_kl_examples(out.val_kto, config.batch_size, config.max_seq_len)
    return out


@dataclass
class _Policy:
    model: Any
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    bf16: bool
    attn_implementation: str
    full_logits: bool
    fresh_adapter: bool  # False when started from init_adapter

    def amp(self) -> AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def _build_policy(
    config: TrainConfig, base_path: Path | str, tokenizer: Any, added_tokens: list[str], *, total: int
) -> _Policy:
    from trainer.run import make_optimizer, make_scheduler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(config)
    attn = resolve_attn_implementation(config.attn_implementation)
    if config.method == "qlora" and not bitsandbytes_available():
        raise RuntimeError("method=qlora needs a CUDA GPU and the bitsandbytes package (4-bit NF4 weights)")
    model = load_base_model(
        base_path,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        attn_implementation=attn,
        quantize_4bit=config.method == "qlora",
        local_only=not config.allow_hub_download,
        rope_scaling=config.rope_scaling.model_dump() if config.rope_scaling else None,
        trust_remote_code=config.trust_remote_code,
    )
    if config.method != "qlora":
        model.to(device)
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.seed)
    if config.init_adapter is not None:
        model = attach_init_adapter(model, config)  # refused when it is not the kind `method` trains
    else:
        model = build_peft_model(model, config, total_steps=total, new_tokens=bool(added_tokens))
    if config.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if bf16:
        for p in trainable:
            p.data = p.data.float()
    optimizer = make_optimizer(config, trainable)
    return _Policy(
        model=model,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, total),
        device=device,
        bf16=bf16,
        attn_implementation=attn,
        full_logits=False,
        fresh_adapter=config.init_adapter is None,
    )


def _reference_context(policy: _Policy) -> AbstractContextManager[Any]:
    """The reference: the base (adapter disabled) for a fresh adapter; the loaded SFT adapter as it is."""
    if policy.fresh_adapter:
        ctx: AbstractContextManager[Any] = policy.model.disable_adapter()
        return ctx
    return nullcontext()


def _rows(examples: list[Encoded], idx: list[int], pad_id: int) -> Batch:
    return collate(examples, [[i] for i in idx], pad_id=pad_id, packed=False)


@torch.no_grad()
def reference_logps(
    model: Any,
    sequences: list[Encoded],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    context: Callable[[], AbstractContextManager[Any]],
    amp: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    """Summed reply log-probs of each sequence under the reference, in eval mode (no dropout), on CPU."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(sequences), dtype=torch.float32)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].input_ids))
    with context():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = _rows(sequences, idx, pad_id).to(device)
            with amp():
                sums, _ = sequence_logps(model, batch, full_logits=False)
            out[torch.tensor(idx)] = sums.float().cpu()
    model.train(was_training)
    return out


@dataclass
class References:
    chosen: torch.Tensor  # per train pair (or per KTO example)
    rejected: torch.Tensor
    kl: torch.Tensor  # KTO: per example, its KL sequence
    val_chosen: torch.Tensor
    val_rejected: torch.Tensor
    val_kl: torch.Tensor


def _empty() -> torch.Tensor:
    return torch.zeros(0)


def compute_references(
    config: TrainConfig,
    data: PreparedPreferences,
    model: Any,
    *,
    pad_id: int,
    device: torch.device,
    context: Callable[[], AbstractContextManager[Any]],
    amp: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> References:
    """The reference log-probs of every train and val sequence (empty for ORPO and SimPO, which need none);
    `context` turns the model into the reference (e.g. peft's disable_adapter)."""
    if config.objective not in REFERENCE_OBJECTIVES:
        return References(_empty(), _empty(), _empty(), _empty(), _empty(), _empty())

    def run(seqs: list[Encoded]) -> torch.Tensor:
        if not seqs:
            return _empty()
        return reference_logps(
            model,
            seqs,
            batch_size=config.batch_size * 2,
            pad_id=pad_id,
            device=device,
            context=context,
            amp=amp,
        )

    if config.objective == "kto":
        return References(
            run([e.encoded for e in data.train_kto]),
            _empty(),
            run([e.kl or e.encoded for e in data.train_kto]),
            run([e.encoded for e in data.val_kto]),
            _empty(),
            run([e.kl or e.encoded for e in data.val_kto]),
        )
    return References(
        run([p.chosen for p in data.train_pairs]),
        run([p.rejected for p in data.train_pairs]),
        _empty(),
        run([p.chosen for p in data.val_pairs]),
        run([p.rejected for p in data.val_pairs]),
        _empty(),
    )


@dataclass
class StepStats:
    """Sums over the examples of one or more micro-batches; `row` turns them into a metrics line."""

    loss_sum: float = 0.0
    n: int = 0  # pairs (KTO: examples)
    chosen_reward_sum: float = 0.0
    n_chosen: int = 0
    rejected_reward_sum: float = 0.0
    n_rejected: int = 0
    margin_sum: float = 0.0
    correct: int = 0
    n_compared: int = 0
    chosen_logps_sum: float = 0.0
    rejected_logps_sum: float = 0.0
    kl_sum: float = 0.0
    n_kl: int = 0

    def add(self, other: StepStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def row(self, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        if self.n:
            out[f"{prefix}loss"] = self.loss_sum / self.n
        if self.n_chosen:
            out[f"{prefix}rewards/chosen"] = self.chosen_reward_sum / self.n_chosen
            out[f"{prefix}logps/chosen"] = self.chosen_logps_sum / self.n_chosen
        if self.n_rejected:
            out[f"{prefix}rewards/rejected"] = self.rejected_reward_sum / self.n_rejected
            out[f"{prefix}logps/rejected"] = self.rejected_logps_sum / self.n_rejected
        if self.n_compared:
            out[f"{prefix}rewards/margins"] = self.margin_sum / self.n_compared
            out[f"{prefix}rewards/accuracies"] = self.correct / self.n_compared
        elif self.n_chosen and self.n_rejected:
            out[f"{prefix}rewards/margins"] = (
                out[f"{prefix}rewards/chosen"] - out[f"{prefix}rewards/rejected"]
            )
        if self.n_kl:
            out[f"{prefix}kl"] = self.kl_sum / self.n_kl
        return out


def pair_batch_loss(
    config: TrainConfig,
    model: Any,
    pairs: list[PairExample],
    idx: list[int],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    pad_id: int,
    device: torch.device,
    full_logits: bool,
    nll_weight: float | None = None,
) -> tuple[torch.Tensor, StepStats]:
    """Summed loss of the pairs `idx` (divide by the step's pair count) and their statistics.

    One forward over [chosen..., rejected...]. ORPO's NLL part is a per-token mean over the optimizer step:
    the summed chosen NLL is weighted by `nll_weight` = (pairs in the step) / (chosen tokens in the step), so
    that dividing by the step's pair count leaves each token weighing the same (default: these pairs alone)."""
    seqs = [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx]
    batch = _rows(seqs, list(range(len(seqs))), pad_id).to(device)
    sums, counts = sequence_logps(model, batch, full_logits=full_logits)
    k = len(idx)
    chosen, rejected = sums[:k], sums[k:]
    n_c, n_r = counts[:k].clamp(min=1), counts[k:].clamp(min=1)
    objective = config.objective
    if objective == "dpo":
        sel = torch.tensor(idx)
        res = dpo_loss(
            chosen,
            rejected,
            ref_chosen[sel].to(device),
            ref_rejected[sel].to(device),
            beta=config.beta,
            label_smoothing=config.label_smoothing,
        )
        total = res.losses.sum()
    elif objective == "simpo":
        res = simpo_loss(
            chosen / n_c,
            rejected / n_r,
            beta=config.beta,
            gamma=config.simpo_gamma,
            label_smoothing=config.label_smoothing,
        )
        total = res.losses.sum()
    else:  # orpo
        res = orpo_loss(chosen / n_c, rejected / n_r, lam=config.orpo_lambda)
        weight = nll_weight if nll_weight is not None else k / max(int(counts[:k].sum()), 1)
        total = res.losses.sum() - chosen.sum() * weight
    margins = res.chosen_rewards - res.rejected_rewards
    stats = StepStats(
        loss_sum=float(total.detach()),
        n=k,
        chosen_reward_sum=float(res.chosen_rewards.sum()),
        n_chosen=k,
        rejected_reward_sum=float(res.rejected_rewards.sum()),
        n_rejected=k,
        margin_sum=float(margins.sum()),
        correct=int((margins > 0).sum()),
        n_compared=k,
        chosen_logps_sum=float(chosen.detach().sum()),
        rejected_logps_sum=float(rejected.detach().sum()),
    )
    return total, stats


def kto_batch_loss(
    config: TrainConfig,
    model: Any,
    examples: list[KTOExample],
    idx: list[int],
    ref: torch.Tensor,
    ref_kl: torch.Tensor,
    *,
    pad_id: int,
    device: torch.device,
    full_logits: bool,
) -> tuple[torch.Tensor, StepStats]:
    """Summed KTO loss of the examples `idx` (divide by the step's example count) and their statistics."""
    sel = torch.tensor(idx)
    kl_seqs = [examples[i].kl or examples[i].encoded for i in idx]
    with torch.no_grad():
        kl_batch = _rows(kl_seqs, list(range(len(kl_seqs))), pad_id).to(device)
        kl_logps, _ = sequence_logps(model, kl_batch, full_logits=full_logits)
    kl = (kl_logps - ref_kl[sel].to(device)).mean().detach().clamp(min=0)
    batch = _rows([examples[i].encoded for i in idx], list(range(len(idx))), pad_id).to(device)
    logps, _ = sequence_logps(model, batch, full_logits=full_logits)
    desirable = torch.tensor([examples[i].desirable for i in idx], device=device)
    losses, rewards = kto_losses(
        logps,
        ref[sel].to(device),
        desirable,
        kl,
        beta=config.beta,
        desirable_weight=config.kto_desirable_weight,
        undesirable_weight=config.kto_undesirable_weight,
    )
    d = desirable.cpu()
    stats = StepStats(
        loss_sum=float(losses.detach().sum()),
        n=len(idx),
        chosen_reward_sum=float(rewards.cpu()[d].sum()),
        n_chosen=int(d.sum()),
        rejected_reward_sum=float(rewards.cpu()[~d].sum()),
        n_rejected=int((~d).sum()),
        chosen_logps_sum=float(logps.detach().cpu()[d].sum()),
        rejected_logps_sum=float(logps.detach().cpu()[~d].sum()),
        kl_sum=float(kl) * len(idx),
        n_kl=len(idx),
    )
    return losses.sum(), stats


@torch.no_grad()
def evaluate_preferences(
    config: TrainConfig,
    model: Any,
    data: PreparedPreferences,
    refs: References,
    *,
    split: str,
    pad_id: int,
    device: torch.device,
    amp: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> StepStats:
    """Loss, rewards, margin and preference accuracy on the train or val split, in eval mode."""
    was_training = model.training
    model.eval()
    stats = StepStats()
    val = split == "val"
    size = config.batch_size
    batch_loss: Callable[[list[int]], tuple[torch.Tensor, StepStats]]
    if config.objective == "kto":
        kto = data.val_kto if val else data.train_kto
        ref, ref_kl = (refs.val_chosen, refs.val_kl) if val else (refs.chosen, refs.kl)
        n = len(kto)

        def batch_loss(idx: list[int]) -> tuple[torch.Tensor, StepStats]:
            return kto_batch_loss(
                config, model, kto, idx, ref, ref_kl, pad_id=pad_id, device=device, full_logits=False
            )
    else:
        pairs = data.val_pairs if val else data.train_pairs
        rc, rr = (refs.val_chosen, refs.val_rejected) if val else (refs.chosen, refs.rejected)
        n = len(pairs)

        def batch_loss(idx: list[int]) -> tuple[torch.Tensor, StepStats]:
            return pair_batch_loss(
                config, model, pairs, idx, rc, rr, pad_id=pad_id, device=device, full_logits=False
            )

    for start in range(0, n, size):
        with amp():
            _, s = batch_loss(list(range(start, min(start + size, n))))
        stats.add(s)
    model.train(was_training)
    return stats


def train_preference(config: TrainConfig, reporter: Reporter, on_step: Callable[[int], None] | None) -> Any:
    """The preference run behind trainer.run.main when config.objective is not sft; returns a TrainSummary."""
    from trainer.run import (
        TrainSummary,
        _save_adapter,
        _seed_everything,
        _step_batches,
        _write_samples,
        plan_training,
        write_resolved_config,
    )

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(f"objective={config.objective} runs in one process: launch it without torchrun")
    started = time.perf_counter()
    out = reporter.output_dir
    _seed_everything(config.seed)
    notes: list[str] = [f"objective {config.objective}"]

    base_path = config.resolved_base_model()
    sft_dir = init_adapter_run_dir(config.init_adapter) if config.init_adapter else None
    tokenizer = load_tokenizer(
        sft_dir or base_path,
        local_only=not config.allow_hub_download,
        trust_remote_code=config.trust_remote_code,
    )
    fmt = PromptFormat.load(sft_dir / PROMPT_FORMAT_FILE) if sft_dir is not None else None
    if sft_dir is not None:
        notes.append(f"prompt format and tokenizer of the SFT run {sft_dir}")
    data = prepare_preference_data(config, tokenizer, fmt)
    if resolve_precision(config) == "fp16":
        notes.append(
            "fp32: the preference loop has no fp16 loss scaling (bf16 is used where the device has it)"
        )
    if config.packing:
        notes.append("packing not used: a preference batch holds whole chosen/rejected rows side by side")
    plan, total, steps_per_epoch = plan_training(config, data.lengths(config.objective), packing=False)
    policy = _build_policy(config, base_path, tokenizer, data.added_tokens, total=total)
    if data.added_tokens:
        notes.append(f"added special tokens {data.added_tokens}; embeddings resized and saved")
    pad_id = int(tokenizer.pad_token_id)
    if config.objective in REFERENCE_OBJECTIVES:
        notes.append(
            "reference log-probs computed once before training: "
            + (
                "the base model (adapter disabled)"
                if policy.fresh_adapter
                else f"the SFT adapter {config.init_adapter}"
            )
        )
    refs = compute_references(
        config,
        data,
        policy.model,
        pad_id=pad_id,
        device=policy.device,
        context=functools.partial(_reference_context, policy),
        amp=policy.amp,
    )

    targets = config.target_modules or (
        detect_linear_targets(policy.model) if config.method in LORA_FAMILY else []
    )
    write_resolved_config(
        config,
        out,
        base_path=base_path,
        fmt=data.fmt,
        packing=False,
        precision="bf16" if policy.bf16 else "fp32",
        attn_implementation=policy.attn_implementation,
        targets=targets,
    )
    tokenizer.save_pretrained(str(out))

    step, tokens_seen = 0, 0
    ckpt = latest_checkpoint(out / CHECKPOINTS_DIR) if config.resume else None
    resumed_from: int | None = None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt, model=policy.model, optimizer=policy.optimizer, scheduler=policy.scheduler
        )
        step, tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        resumed_from = step
        notes.append(f"resumed from checkpoint step {step}")
    reporter.reset_metrics(keep_up_to_step=step)

    objective = config.objective
    train_seqs = (
        [e.encoded for e in data.train_kto]
        if objective == "kto"
        else [s for p in data.train_pairs for s in (p.chosen, p.rejected)]
    )
    summary = TrainSummary(
        state="running",
        max_steps=total,
        samples_total=data.total,
        samples_used=data.n_train(objective)
        + (len(data.val_kto) if objective == "kto" else len(data.val_pairs)),
        samples_train=data.n_train(objective),
        samples_val=len(data.val_kto) if objective == "kto" else len(data.val_pairs),
        samples_dropped=dict(data.dropped),
        train_tokens=sum(data.lengths(objective)),
        train_target_tokens=sum(e.num_trained() for e in train_seqs),
        prompt_format=data.fmt.kind,
        method=config.method,
        packing=False,
        resumed_from_step=resumed_from,
        code_version=code_version(),
        notes=notes,
    )

    def finish(state: str, last_loss: float | None, last_eval: float | None) -> Any:
        summary.state = state
        summary.step = step
        summary.tokens_seen = tokens_seen
        summary.train_loss = last_loss
        summary.eval_loss = last_eval
        summary.seconds = round(time.perf_counter() - started, 3)
        write_json_atomic(out / SUMMARY_FILE, summary.to_dict())
        return summary

    def checkpoint(policy: _Policy) -> None:
        save_checkpoint(
            out / CHECKPOINTS_DIR,
            step=step,
            model=policy.model,
            optimizer=policy.optimizer,
            scheduler=policy.scheduler,
            extra={"tokens_seen": tokens_seen, "max_steps": total},
            keep=config.save_total_limit,
        )

    policy.model.train()
    reporter.status("running", step=step, max_steps=total)
    window = StepStats()
    window_tokens, window_start = 0, time.perf_counter()
    last_loss: float | None = None
    last_eval: float | None = None
    for micro in _step_batches(plan, config.grad_accum, start_step=step):
        if reporter.cancel_requested():
            checkpoint(policy)
            reporter.status("cancelled", step=step, max_steps=total)
            return finish("cancelled", last_loss, last_eval)
        step_stats, real = _preference_step(config, policy, data, refs, micro, pad_id)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.trainable, config.max_grad_norm))
        lr = float(policy.scheduler.get_last_lr()[0])
        policy.optimizer.step()
        policy.scheduler.step()
        policy.optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += real
        window_tokens += real
        window.add(step_stats)
        last_loss = step_stats.loss_sum / max(step_stats.n, 1)
        last = step == total
        do_eval = bool(data.val_pairs or data.val_kto) and (
            last or (config.eval_steps > 0 and step % config.eval_steps == 0)
        )
        eval_row: dict[str, float] = {}
        if do_eval:
            ev = evaluate_preferences(
                config,
                policy.model,
                data,
                refs,
                split="val",
                pad_id=pad_id,
                device=policy.device,
                amp=policy.amp,
            )
            eval_row = ev.row("eval_")
            last_eval = eval_row.get("eval_loss")
        if last or do_eval or step % config.logging_steps == 0:
            now = time.perf_counter()
            row: dict[str, Any] = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 4),
                **window.row(),
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                "tokens": window_tokens,
                "timestamp": time.time(),
                **eval_row,
            }
            reporter.metrics(row)
            window, window_tokens, window_start = StepStats(), 0, now
        if config.save_steps > 0 and step % config.save_steps == 0 and not last:
            checkpoint(policy)
        reporter.status("running", step=step, max_steps=total)
        if on_step is not None:
            on_step(step)

    _save_adapter(policy.model, config, out, base_path=str(base_path), targets=targets)
    # held-out prompts with their preferred reply as the reference (kto: its desirable completions)
    val_convs: list[list[Message]] = [e.conversation for e in data.val_kto if e.desirable]
    for pair in data.val_pairs:
        val_convs.append([*pair.prompt, {"role": "assistant", "content": pair.chosen_text}])
    _write_samples(policy.model, tokenizer, data.fmt, val_convs, config, out, notes, step=step)
    plot_loss_curve(reporter.read_metrics(), out / LOSS_CURVE_FILE)
    del policy
    if config.merge:
        from trainer.infer import export_merged

        export_merged(out)
    reporter.status("succeeded", step=step, max_steps=total)
    return finish("succeeded", last_loss, last_eval)


def _preference_step(
    config: TrainConfig,
    policy: _Policy,
    data: PreparedPreferences,
    refs: References,
    micro: list[MicroBatch],
    pad_id: int,
) -> tuple[StepStats, int]:
    """Forward and backward over one optimizer step's micro-batches; (statistics, real tokens)."""
    groups = [[row[0] for row in mb] for mb in micro]
    n_step = sum(len(g) for g in groups)
    stats = StepStats()
    real = 0
    nll_weight = None
    if config.objective == "orpo":
        # num_trained counts the label at position 0 too, which the shift never scores; it is always masked
        chosen_tokens = sum(data.train_pairs[i].chosen.num_trained() for g in groups for i in g)
        nll_weight = n_step / max(chosen_tokens, 1)
    for idx in groups:
        with policy.amp():
            if config.objective == "kto":
                total, s = kto_batch_loss(
                    config,
                    policy.model,
                    data.train_kto,
                    idx,
                    refs.chosen,
                    refs.kl,
                    pad_id=pad_id,
                    device=policy.device,
                    full_logits=policy.full_logits,
                )
                real += sum(len(data.train_kto[i].encoded.input_ids) for i in idx)
            else:
                total, s = pair_batch_loss(
                    config,
                    policy.model,
                    data.train_pairs,
                    idx,
                    refs.chosen,
                    refs.rejected,
                    pad_id=pad_id,
                    device=policy.device,
                    full_logits=policy.full_logits,
                    nll_weight=nll_weight,
                )
                real += sum(
                    len(data.train_pairs[i].chosen.input_ids) + len(data.train_pairs[i].rejected.input_ids)
                    for i in idx
                )
            loss = total / n_step
        loss.backward()  # type: ignore[no-untyped-call]
        stats.add(s)
    return stats, real
