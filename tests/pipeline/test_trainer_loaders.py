"""Export bundles read by LLaMA-Factory's and Axolotl's own loaders.

Neither library installs into the project's environment: both pin transformers, datasets, trl, pydantic and
huggingface_hub to other versions, and pull CUDA-only packages (LLaMA-Factory 0.9.5: torch 2.14 with the
nvidia-* CUDA 13 wheels and triton; Axolotl 0.19: xformers, triton, bitsandbytes, liger-kernel, torchao).
Their data code runs on ours, though, installed beside it without dependencies:

    .venv/bin/pip install --no-deps --target /tmp/if-loaders llamafactory==0.9.5 axolotl==0.19.0 colorama addict
    PYTHONPATH=/tmp/if-loaders .venv/bin/pytest tests/pipeline/test_trainer_loaders.py

Without that folder these tests skip (docs/formats.md says what was checked, and with which versions).
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from app.pipeline import formats

RECORDS = [
    {"record_id": 1, "instruction": "Add 2 and 3.", "input": "", "output": "5", "source": "human"},
    {
        "record_id": 2,
        "instruction": "Translate to English.",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "source": "human",
    },
    {
        "record_id": 3,
        "instruction": "And 3+3?",
        "input": "",
        "output": "6",
        "source": "human",
        "messages": [
            {"role": "user", "content": "What is 1+1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
        ],
    },
]
CARD = formats.CardInfo(
    title="t",
    description="",
    language="en",
    fmt="-",
    snapshot={
        "id": 1,
        "name": "v1",
        "content_hash": "0" * 64,
        "created_at": "-",
        "record_count": 3,
        "filter": {},
    },
    stats={},
    lengths={},
    jobs=[],
    licenses={},
)


def _bundle(tmp_path: Path, fmt: str, parquet: bool) -> Path:
    files = formats.build_bundle(
        fmt=fmt, splits={"train": RECORDS}, parquet=parquet, card=CARD, name="if_snap"
    )
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _llamafactory_loader() -> Any:
    pytest.importorskip(
        "llamafactory", reason="LLaMA-Factory is not beside the environment (see the docstring)"
    )
    # Its data package imports the audio/video plugins' libraries at import time; none is used for text.
    for name in ("torchaudio", "av"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = stub
    import os

    os.environ["DISABLE_VERSION_CHECK"] = "1"
    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list

    return get_dataset_list, _load_single_dataset


@pytest.mark.parametrize("parquet", [False, True], ids=["json", "parquet"])
@pytest.mark.parametrize("fmt", ["alpaca", "alpaca_jsonl", "sharegpt", "openai", "axolotl"])
def test_llamafactory_aligns_every_bundle_to_the_same_turns(tmp_path, fmt, parquet):
    get_dataset_list, load_single = _llamafactory_loader()
    root = _bundle(tmp_path, fmt, parquet)
    args = types.SimpleNamespace(
        dataset_dir=str(root),
        preprocessing_num_workers=None,
        streaming=False,
        max_samples=None,
        media_dir=str(root),
        overwrite_cache=True,
    )
    model_args = types.SimpleNamespace(cache_dir=str(tmp_path / "cache"), hf_hub_token=None)
    training_args = types.SimpleNamespace(dataloader_num_workers=0, local_process_index=0)
    (attr,) = get_dataset_list(["if_snap"], str(root))
    rows = load_single(attr, model_args, args, training_args).to_list()
    # LLaMA-Factory's alpaca converter joins instruction and input with one newline; chats keep ours.
    joined = "\n" if fmt.startswith("alpaca") else "\n\n"
    assert [(r["_prompt"], r["_response"], r["_system"] or None) for r in rows] == [
        ([{"role": "user", "content": "Add 2 and 3."}], [{"role": "assistant", "content": "5"}], None),
        (
            [{"role": "user", "content": f"Translate to English.{joined}bonjour"}],
            [{"role": "assistant", "content": "hello"}],
            "You translate.",
        ),
        (
            [
                {"role": "user", "content": "What is 1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "And 3+3?"},
            ],
            [{"role": "assistant", "content": "6"}],
            None,
        ),
    ]


@pytest.mark.parametrize("parquet", [False, True], ids=["jsonl", "parquet"])
def test_axolotl_chat_template_trains_on_the_assistant_turns(tmp_path, parquet):
    pytest.importorskip("axolotl", reason="Axolotl is not beside the environment (see the docstring)")
    from axolotl.prompt_strategies.chat_template import load
    from axolotl.utils.dict import DictDefault
    from datasets import load_dataset

    root = _bundle(tmp_path, "axolotl", parquet)
    path = str(root / ("data/train.parquet" if parquet else "data/train.jsonl"))
    ds = load_dataset("parquet" if parquet else "json", data_files=path, cache_dir=str(tmp_path / "c"))[
        "train"
    ]
    tokenizer = _bpe_tokenizer([json.dumps(r) for r in ds.to_list()])
    cfg = DictDefault({"chat_template": "tokenizer_default", "sequence_len": 2048, "train_on_inputs": False})
    ds_cfg = DictDefault(
        {"type": "chat_template", "field_messages": "conversations", "chat_template": "tokenizer_default"}
    )
    strategy = load(tokenizer, cfg, ds_cfg)
    seen = []
    for row in ds.to_list():
        out = strategy.tokenize_prompt(row)
        trained = [i for i, label in zip(out["input_ids"], out["labels"], strict=True) if label != -100]
        seen.append((tokenizer.decode(out["input_ids"]), tokenizer.decode(trained)))
    assert seen == [
        ("<|user|>Add 2 and 3.</s><|assistant|>5</s>", "5</s>"),
        (
            "<|system|>You translate.</s><|user|>Translate to English.\n\nbonjour</s><|assistant|>hello</s>",
            "hello</s>",
        ),
        ("<|user|>What is 1+1?</s><|assistant|>2</s><|user|>And 3+3?</s><|assistant|>6</s>", "2</s>6</s>"),
    ]


def _bpe_tokenizer(corpus: list[str]) -> Any:
    """A byte-level BPE tokenizer trained here on the rows (nothing downloaded), with a chat template."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=400,
        special_tokens=["[UNK]", "</s>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*corpus, "<|user|>", "<|assistant|>", "<|system|>"] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>", bos_token="<s>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tokenizer
