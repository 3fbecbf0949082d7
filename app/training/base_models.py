"""The base models under IF_MODELS_DIR and whether the trainer can load each one.

One check serves `instructforge models`, `GET /base-models`, the training form's list and the validation of
`POST /training-runs`, so that the three places never disagree about a folder. It reads files only —
`config.json`, the tokenizer's files, the JSON headers of `*.safetensors` — and never imports transformers or
torch: the web process must not load them (tests/test_layering.py), and a form must answer in milliseconds.
A safetensors header names every tensor's shape and byte range, so the parameter count is exact and a
truncated download (the last tensor ends past the end of the file) is caught without reading the weights.
What files cannot show (bytes inside a tensor that are garbage) the trainer reports when it loads the model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# The trainer loads every base with AutoModelForCausalLM; these suffixes are the classes it maps to.
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# Tokenizer files AutoTokenizer can build a tokenizer from, most specific first.
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.tiktoken",),
)
# A safetensors header is a few hundred kB even for the largest models; more means the file is not one.
MAX_HEADER_BYTES = 100 * 2**20
# What `auto` picks without a chat template (trainer.formats.choose_kind).
FALLBACK_FORMAT = "alpaca for single-turn records, ChatML for conversations"


@dataclass
class ModelCheck:
    """One folder under the models directory: what it holds and whether a training run may use it."""

    name: str  # relative to the models directory: what `base_model` takes
    ok: bool = False
    reason: str | None = None  # why it is refused; None when ok
    model_type: str | None = None
    architecture: str | None = None
    parameters: int | None = None  # from the safetensors headers; None for .bin-only weights
    size_bytes: int = 0
    dtype: str | None = None
    tokenizer: str | None = None
    chat_template: bool = False
    prompt_format: str = ""  # what prompt_format=auto will use with this tokenizer
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Refused(Exception):
    """A reason the trainer could not load the folder."""


def list_models(models_dir: Path) -> list[ModelCheck]:
    """Every model folder under `models_dir` (one level, or two for `org/name` folders), checked."""
    root = models_dir.resolve()
    try:
        entries = _subdirs(root) if root.is_dir() else []
    except OSError:  # the directory itself cannot be listed: nothing to offer
        return []
    out: list[ModelCheck] = []
    for entry in entries:
        try:
            children = [c for c in _subdirs(entry) if (c / "config.json").exists()]
        except OSError:
            children = []
        if (entry / "config.json").exists() or not children:
            out.append(check_model(root, entry.name))
        else:  # an organisation folder, as `models fetch org/name --name org/name` or a hub cache lays out
            out += [check_model(root, f"{entry.name}/{c.name}") for c in children]
    return out


def check_model(models_dir: Path, name: str) -> ModelCheck:
    """The check of `models_dir/name`; never raises for anything found on disk."""
    result = ModelCheck(name=name)
    root = models_dir.resolve()
    path = (root / name).resolve()
    try:
        if not path.is_relative_to(root):
            raise Refused("it lies outside the models directory (an absolute path, `..` or a link out of it)")
        if not path.is_dir():
            raise Refused("no such folder in the models directory")
        result.size_bytes = _size(path)
        _check_config(path, result)
        _check_tokenizer(path, result)
        _check_weights(path, result)
    except Refused as exc:
        result.reason = str(exc)
        return result
    except OSError as exc:  # unreadable files, a folder removed while we look: a reason, never a 500
        result.reason = f"unreadable: {exc.strerror or exc}"
        return result
    result.ok = True
    return result


def _subdirs(path: Path) -> list[Path]:
    # dot folders are not models: huggingface_hub keeps its download bookkeeping in `.cache/`
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"corrupt {what} ({path.name}): {exc}") from exc
    if not isinstance(data, dict):
        raise Refused(f"corrupt {what} ({path.name}): not a JSON object")
    return data


def _check_config(path: Path, result: ModelCheck) -> None:
    if not (path / "config.json").is_file():
        raise Refused("no config.json: not a Hugging Face model folder")
    config = _read_json(path / "config.json", "config")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise Refused("config.json has no model_type: the architecture is unknown")
    result.model_type = model_type
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and architectures:
        result.architecture = str(architectures[0])
        if not any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
            raise Refused(
                f"not a causal language model ({', '.join(map(str, architectures))}): "
                "the trainer fine-tunes *ForCausalLM models"
            )
    known = is_known_model_type(model_type)
    if known is None:
        result.notes.append("transformers is not installed here: the worker checks the architecture")
    elif not known:
        raise Refused(f"unknown architecture {model_type!r}: the installed transformers does not support it")


def _check_tokenizer(path: Path, result: ModelCheck) -> None:
    found = next((files for files in TOKENIZER_FILES if all((path / f).is_file() for f in files)), None)
    if found is None:
        raise Refused("missing tokenizer (no tokenizer.json, tokenizer.model, or vocab.json with merges.txt)")
    empty = [f for f in found if (path / f).stat().st_size == 0]
    if empty:
        raise Refused(f"corrupt tokenizer: {', '.join(empty)} is empty")
    result.tokenizer = " + ".join(found)
    tok_config = (
        _read_json(path / "tokenizer_config.json", "tokenizer config")
        if (path / "tokenizer_config.json").is_file()
        else {}
    )
    # transformers keeps the template in tokenizer_config.json (older) or chat_template.jinja/.json (newer)
    result.chat_template = bool(
        tok_config.get("chat_template")
        or (path / "chat_template.jinja").is_file()
        or (path / "chat_template.json").is_file()
    )
    result.prompt_format = "the tokenizer's chat template" if result.chat_template else FALLBACK_FORMAT


def _check_weights(path: Path, result: ModelCheck) -> None:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "safetensors index").get("weight_map") or {}
        missing = sorted({str(f) for f in weight_map.values()} - {p.name for p in path.glob("*.safetensors")})
        if missing:
            raise Refused(f"incomplete download: shard {missing[0]} of the safetensors index is missing")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        if sorted(path.glob("pytorch_model*.bin")):
            result.notes.append("weights in pytorch_model*.bin: the parameter count needs safetensors")
            return
        raise Refused("no weights (no *.safetensors or pytorch_model.bin)")
    total, dtypes = 0, Counter[str]()
    for shard in shards:
        for dtype, count in _safetensors_tensors(shard):
            total += count
            dtypes[dtype] += count
    result.parameters = total
    result.dtype = dtypes.most_common(1)[0][0] if dtypes else None


def _safetensors_tensors(path: Path) -> list[tuple[str, int]]:
    """(dtype, element count) of every tensor in the file's header; Refused when the file is cut short."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise Refused(f"corrupt weights: {path.name} is not a safetensors file")
            header = json.loads(fh.read(length))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"corrupt weights: {path.name} has an unreadable header ({exc})") from exc
    if not isinstance(header, dict):
        raise Refused(f"corrupt weights: {path.name} has an unreadable header")
    out, end = [], 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            out.append((str(info["dtype"]), math.prod(int(d) for d in info["shape"])))
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise Refused(f"corrupt weights: {path.name} has a malformed tensor entry {key!r}") from exc
    if 8 + length + end > size:
        raise Refused(f"incomplete download: {path.name} is shorter than its header says")
    return out


def is_known_model_type(model_type: str) -> bool | None:
    """Whether the installed transformers supports `model_type`; None when transformers is not installed.

    Found in its files instead of by importing it: importing any part of transformers loads torch, which the
    web process must not do. A supported type has its own `models/<type>/` package or is named, quoted, in the
    auto-mapping sources (where types such as `gemma3_text` map to another package); the search is lenient on
    purpose, since a wrong refusal would block a model that trains.
    """
    sources = _transformers_sources()
    if sources is None:
        return None
    package, text = sources
    return (package / "models" / model_type.replace("-", "_")).is_dir() or f'"{model_type}"' in text


@lru_cache(maxsize=1)
def _transformers_sources() -> tuple[Path, str] | None:
    spec = importlib.util.find_spec("transformers")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    auto = package / "models" / "auto"
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(auto.glob("*.py")))
    return package, text
