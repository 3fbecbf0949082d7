"""Loading a trained adapter (or a fully fine-tuned model) with its saved prompt format, batched generation,
and merged export."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.contract import ADAPTER_DIR, MERGED_DIR, MODEL_DIR, PROMPT_FORMAT_FILE, TRAIN_CONFIG_FILE
from trainer.data import Message
from trainer.formats import PromptFormat, encode_prompt, prompt_messages
from trainer.methods import (
    BITFIT_CONFIG,
    cuda_bf16,
    load_base_model,
    load_bitfit,
    load_tokenizer,
    resolve_attn_implementation,
)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _attach_adapter(model: Any, adapter_dir: Path) -> Any:
    if (adapter_dir / BITFIT_CONFIG).exists():
        load_bitfit(model, adapter_dir)
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir))


def _load_base(output_dir: Path, base_model: str | None, *, dtype: torch.dtype | str) -> tuple[Any, Any]:
    cfg = TrainConfig.from_yaml(output_dir / TRAIN_CONFIG_FILE)
    base = base_model or cfg.base_model
    local_only = not cfg.allow_hub_download
    # the saved tokenizer, not the base one: it carries any tokens added for the prompt format
    tokenizer = load_tokenizer(output_dir, local_only=True, trust_remote_code=cfg.trust_remote_code)
    model = load_base_model(
        base,
        dtype=dtype,  # type: ignore[arg-type]
        attn_implementation=resolve_attn_implementation("auto"),
        local_only=local_only,
        rope_scaling=cfg.rope_scaling.model_dump() if cfg.rope_scaling else None,
        trust_remote_code=cfg.trust_remote_code,
    )
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        # the trained rows come from the adapter (modules_to_save); no point initialising them here
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model, tokenizer


def load_for_inference(
    output_dir: str | Path, base_model: str | None = None, *, device: torch.device | None = None
) -> tuple[Any, Any, PromptFormat]:
    """(model, tokenizer, prompt format) from an artifacts folder; the base is loaded in 16 bits on GPU."""
    out = Path(output_dir)
    dtype = torch.bfloat16 if cuda_bf16() else torch.float32
    trained = TrainConfig.from_yaml(out / TRAIN_CONFIG_FILE)
    if trained.method == "full":
        # the whole fine-tuned model: a base_model given here has nothing to add to it
        remote = trained.trust_remote_code
        tokenizer = load_tokenizer(out / MODEL_DIR, local_only=True, trust_remote_code=remote)
        model = load_base_model(
            out / MODEL_DIR,
            dtype=dtype,
            attn_implementation=resolve_attn_implementation("auto"),
            trust_remote_code=remote,
        )
    else:
        model, tokenizer = _load_base(out, base_model, dtype=dtype)
        model = _attach_adapter(model, out / ADAPTER_DIR)
    model.to(device or _device())
    model.eval()
    fmt = PromptFormat.load(out / PROMPT_FORMAT_FILE)
    return model, tokenizer, fmt


@dataclass(frozen=True)
class Completion:
    """One prompt's answer from :func:`iter_completions`."""

    index: int  # the prompt's position in the list given
    text: str
    token_ids: list[int]  # the generated tokens before the first stop token (which is not included)
    stopped: bool  # ended on a stop token; False when max_new_tokens cut it off


def encode_prompts(
    fmt: PromptFormat,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[list[dict[str, str]]] | Sequence[list[Message]],
) -> list[list[int]]:
    """The prompt tokens of each user prompt (or conversation ending with a user turn) in the saved format."""
    return [encode_prompt(fmt, tokenizer, prompt_messages(p)) for p in prompts]


@torch.no_grad()
def iter_completions(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    prompt_ids: Sequence[list[int]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[list[Completion]]:
    """Completions of encoded prompts, one list per batch as each batch finishes, longest prompts first.

    Prompts are sorted by length before batching, so a batch pads little, and left-padded, so every row ends
    where generation starts; the model's KV cache is on (a training model may have it switched off). Greedy
    rows are the same tokens as one prompt at a time. Sampling uses temperature and top_p only (top_k off,
    whatever the model's generation_config says) and seeds the RNG per batch from `seed` and the batch's
    number, in a forked RNG state: the same prompts, batch size and seed give the same completions, and
    the caller's RNG is left as it was.
    """
    stop_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in fmt.stop_tokens]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    # longest first: an out-of-memory shows up in the first batch, not at the end; ties keep input order
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    )
    was_training = model.training
    model.eval()
    try:
        for number, start in enumerate(range(0, len(order), batch_size)):
            chunk = order[start : start + batch_size]
            encoded = [prompt_ids[i] for i in chunk]
            width = max(len(e) for e in encoded)
            input_ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
            attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
            with _seeded(None if greedy else seed + number, device):
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                    **sampling,
                )
            batch: list[Completion] = []
            for index, row in zip(chunk, output[:, width:].tolist(), strict=True):
                cut = next((i for i, t in enumerate(row) if t in stop_ids), None)
                tokens = row if cut is None else row[:cut]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                batch.append(Completion(index=index, text=text, token_ids=tokens, stopped=cut is not None))
            yield batch
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    prompts: Sequence[str] | Sequence[list[dict[str, str]]] | Sequence[list[Message]],
    *,
    max_new_tokens: int = 128,
    greedy: bool = True,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Completions for user prompts (or conversations ending with a user turn), in the order given.

    Built with the saved format and batched by :func:`iter_completions` (sorted by length, left-padded).
    """
    texts = [""] * len(prompts)
    for batch in iter_completions(
        model,
        tokenizer,
        fmt,
        encode_prompts(fmt, tokenizer, prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    ):
        for completion in batch:
            texts[completion.index] = completion.text
    return texts


def export_merged(
    output_dir: str | Path, dest: str | Path | None = None, base_model: str | None = None
) -> Path:
    """Merge the adapter into the original base weights (its stored 16-bit dtype, never a 4-bit copy)."""
    out = Path(output_dir)
    target = Path(dest) if dest is not None else out / MERGED_DIR
    cfg = TrainConfig.from_yaml(out / TRAIN_CONFIG_FILE)
    if cfg.method in ("prefix", "prompt"):
        raise ValueError(f"{cfg.method} tuning has no weights to merge")
    if cfg.method == "full":
        raise ValueError(f"method=full has no adapter to merge: {out / MODEL_DIR} is the whole model")
    # dtype="auto" keeps the checkpoint's own precision; no quantization_config is ever passed here
    model, tokenizer = _load_base(out, base_model, dtype="auto")
    model = _attach_adapter(model, out / ADAPTER_DIR)
    if cfg.method == "bitfit":
        _complete_bitfit_biases(model)
    else:
        model = model.merge_and_unload()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    PromptFormat.load(out / PROMPT_FORMAT_FILE).save(target / PROMPT_FORMAT_FILE)
    return target


def _complete_bitfit_biases(model: Any) -> None:
    """A merged BitFit model must load with its biases: turn on the config's bias flags, zero-fill the rest."""
    cfg = model.config
    if not (hasattr(cfg, "attention_bias") and hasattr(cfg, "mlp_bias")):
        if any(m.bias is None for m in _decoder_linears(model)):
            raise ValueError(f"cannot export merged BitFit for model_type={cfg.model_type}: no bias flags")
        return
    for module in _decoder_linears(model):
        if module.bias is None:
            module.bias = torch.nn.Parameter(
                torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device)
            )
    cfg.attention_bias = True
    cfg.mlp_bias = True


def _decoder_linears(model: Any) -> list[torch.nn.Linear]:
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
