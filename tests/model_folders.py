"""A models directory as a newcomer's might look: two tiny local models that load, and folders that don't, each
broken the way real downloads and copies break. Built locally (tests/trainer/conftest.py), never downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# folder -> the words its refusal must contain
REFUSED = {
    "bert-classifier": "not a causal language model",
    "corrupt-config": "corrupt config",
    "frobnicator-7b": "unknown architecture 'frobnicator'",
    "no-tokenizer": "missing tokenizer",
    "notes": "no config.json",
    "truncated-download": "incomplete download",
}
USABLE = ("tiny-llama", "tiny-llama-chat")


def build_models_dir(root: Path) -> Path:
    """`root` filled with USABLE and REFUSED folders; returns it."""
    from tests.trainer.conftest import CHAT_TEMPLATE, _save_model, _tokenizer

    root.mkdir(parents=True, exist_ok=True)
    plain = _save_model(root / "tiny-llama", _tokenizer(None))
    _save_model(root / "tiny-llama-chat", _tokenizer(CHAT_TEMPLATE))

    def copy(name: str) -> Path:
        return Path(shutil.copytree(plain, root / name))

    no_tokenizer = copy("no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tokenizer / f).unlink(missing_ok=True)
    (copy("corrupt-config") / "config.json").write_text('{"model_type": "llama", ', encoding="utf-8")
    _edit_config(copy("frobnicator-7b"), model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    _edit_config(copy("bert-classifier"), model_type="bert", architectures=["BertForMaskedLM"])
    weights = copy("truncated-download") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted copy or download
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("models to try later\n", encoding="utf-8")
    return root


def _edit_config(path: Path, **values: object) -> None:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config.update(values)
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
