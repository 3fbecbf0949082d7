"""Tiny tokenizer and Llama model trained/built locally (no downloads), shared by the trainer tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.config import TrainConfig

# tiny matmuls gain nothing from threads, and on a busy 2-core CI box oversubscription makes them ~4x slower
torch.set_num_threads(1)

# a Zephyr-style template that itself emits the BOS, the classic double-BOS trap when the tokenizer adds one too
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def shared_data_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def seed_task_records() -> list[dict[str, str]]:
    """Self-Instruct seed tasks as alpaca records (first instance each)."""
    out = []
    with (shared_data_dir() / "self-instruct" / "seed_tasks.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            task = json.loads(line)
            inst = task["instances"][0]
            out.append({"instruction": task["instruction"], "input": inst["input"], "output": inst["output"]})
    return out


def identity_conversations() -> list[dict[str, Any]]:
    """FastChat's ShareGPT-format identity conversations (1-3 exchanges) as messages records."""
    raw = json.loads((shared_data_dir() / "fastchat" / "dummy_conversation.json").read_text(encoding="utf-8"))
    roles = {"human": "user", "gpt": "assistant"}
    return [
        {"messages": [{"role": roles[m["from"]], "content": m["value"]} for m in conv["conversations"]]}
        for conv in raw
    ]


def _corpus() -> list[str]:
    texts = []
    for r in seed_task_records():
        texts += [r["instruction"], r["input"], r["output"]]
    for c in identity_conversations()[:200]:
        texts += [m["content"] for m in c["messages"]]
    texts.append("Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:")
    return texts


def _tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    # like Llama: the tokenizer itself prepends <s>
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.pad_token = hf.eos_token  # pad == eos, the trap that masks EOS out of the labels
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


def _save_model(path: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def plain_tokenizer() -> PreTrainedTokenizerFast:
    return _tokenizer(None)


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    return _tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def base_model(models_root: Path, plain_tokenizer: PreTrainedTokenizerFast) -> Path:
    """A tiny random Llama whose tokenizer has no chat template."""
    return _save_model(models_root / "tiny-llama", plain_tokenizer)


@pytest.fixture(scope="session")
def chat_base_model(models_root: Path, chat_tokenizer: PreTrainedTokenizerFast) -> Path:
    """The same tiny Llama with a tokenizer that has a chat template."""
    return _save_model(models_root / "tiny-llama-chat", chat_tokenizer)


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 short seed tasks: small enough to memorise in a few dozen steps."""
    short = [r for r in seed_task_records() if len(r["instruction"]) + len(r["input"]) < 160]
    short = [r for r in short if 8 <= len(r["output"]) <= 60][:20]
    assert len(short) == 20
    path = tmp_path_factory.mktemp("data") / "alpaca.json"
    path.write_text(json.dumps(short), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def messages_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "messages.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in identity_conversations()[:24]), encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path: Path, base_model: Path, alpaca_file: Path) -> Callable[..., TrainConfig]:
    """A fast CPU config; tests override what they exercise."""

    def build(**overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "base_model": str(base_model),
            "dataset_path": str(alpaca_file),
            "output_dir": str(tmp_path / "run"),
            "method": "lora",
            "max_seq_len": 256,
            "batch_size": 4,
            "grad_accum": 1,
            "max_steps": 4,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "val_fraction": 0.1,
            "logging_steps": 1,
            "eval_steps": 0,
            "save_steps": 0,
            "sample_prompts": 0,
            "gradient_checkpointing": False,
            "num_virtual_tokens": 4,
            "r": 8,
            "adalora_target_r": 4,
            "alpha": 16,
        }
        values.update(overrides)
        return TrainConfig(**values)

    return build
