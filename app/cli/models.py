"""`instructforge models`: the base models under IF_MODELS_DIR, checked the way a training run checks them;
`instructforge models fetch REPO_ID`: download one from the Hugging Face hub when IF_ALLOW_HUB_DOWNLOAD is on.

The check is app.training.base_models, the same one the API and the training form use: it reads files only,
so this command needs neither the database nor torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from app.training.base_models import ModelCheck, check_model, list_models

# Which files `models fetch` downloads: what the trainer loads (config, tokenizer, safetensors, templates),
# not the duplicate .bin/.pth/.onnx/.gguf exports many repositories also hold (often several GB each).
FETCH_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
EXIT_REFUSED = 1  # listing: some folder is refused; fetch: the download failed or the model is refused
EXIT_USAGE = 2  # fetch disabled, or a malformed repository id or name


def _models_dir(args: argparse.Namespace) -> Path:
    if args.models_dir is not None:
        return Path(args.models_dir)
    from app.config import get_settings

    return get_settings().models_dir


def _size(n_bytes: int) -> str:
    n = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _params(n: int | None) -> str:
    if n is None:
        return "parameters unknown"
    return f"{n / 1e9:.2f}B parameters" if n >= 1e9 else f"{n / 1e6:.1f}M parameters"


def describe(check: ModelCheck) -> str:
    """One line: the verdict, the name, then what was found or why it is refused."""
    if not check.ok:
        return f"refused  {check.name}: {check.reason}"
    template = "chat template: yes" if check.chat_template else "chat template: no"
    parts = [
        f"{check.model_type} ({check.architecture or 'architecture not named'})",
        _params(check.parameters),
        _size(check.size_bytes),
        check.dtype or "dtype unknown",
        f"tokenizer: {check.tokenizer}",
        f"{template}, prompt format: {check.prompt_format}",
    ]
    line = f"ok       {check.name}: " + "; ".join(parts)
    return line + "".join(f"; note: {n}" for n in check.notes)


def cmd_models(args: argparse.Namespace) -> int:
    root = _models_dir(args)
    checks = list_models(root)
    usable = sum(c.ok for c in checks)
    if args.json:
        data: dict[str, Any] = {"models_dir": str(root.resolve()), "models": [c.as_dict() for c in checks]}
        print(json.dumps(data, ensure_ascii=False))
    else:
        print(f"models directory: {root.resolve()}")
        for check in checks:
            print(describe(check))
        print(f"{len(checks)} found, {usable} usable, {len(checks) - usable} refused")
    if not checks:
        print(
            f"no base models in {root.resolve()}: `instructforge models fetch REPO_ID`, or copy a model "
            "folder there (config.json, tokenizer files, *.safetensors); see docs/training.md",
            file=sys.stderr,
        )
    return 0 if checks and usable == len(checks) else EXIT_REFUSED


def cmd_fetch(args: argparse.Namespace) -> int:
    from app.config import get_settings

    root = _models_dir(args)
    if not get_settings().allow_hub_download:
        print(
            "error: hub downloads are disabled. Set IF_ALLOW_HUB_DOWNLOAD=true (environment or .env) to let "
            f"`instructforge models fetch` download into {root.resolve()}, or copy a model folder there "
            "yourself (config.json, tokenizer files, *.safetensors); see docs/training.md",
            file=sys.stderr,
        )
        return EXIT_USAGE
    name = args.name or args.repo_id.rsplit("/", 1)[-1]
    if not REPO_ID.match(args.repo_id) or not _plain_name(name):
        print(
            f"error: expected REPO_ID as owner/name and a plain folder name, got {args.repo_id!r}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        print("error: huggingface_hub is not installed: pip install 'instructforge[train]'", file=sys.stderr)
        return EXIT_REFUSED
    target = root / name
    try:
        snapshot_download(
            repo_id=args.repo_id, revision=args.revision, local_dir=str(target), allow_patterns=FETCH_PATTERNS
        )
    except Exception as exc:  # any hub or network failure (offline, 404, gated, disk full): one line
        print(f"error: could not download {args.repo_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    check = check_model(root, name)
    print(describe(check))
    return 0 if check.ok else EXIT_REFUSED


def _plain_name(name: str) -> bool:
    parts = name.split("/")
    return 0 < len(parts) <= 2 and all(
        p and not p.startswith(".") and re.match(r"^[\w.-]+$", p) for p in parts
    )


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models` and `models fetch`."""
    models = subparsers.add_parser(
        "models",
        help="list the base models under IF_MODELS_DIR and check that each one loads",
        description="List the base models under IF_MODELS_DIR (one folder each, or org/name) and check "
        "each the way a training run does: config.json (architecture), tokenizer, chat template (or which "
        "prompt format is used instead), parameter count and size on disk, and why a folder is refused. "
        "Exit status 0 when every folder is usable, 1 when one is refused or none is found.",
    )
    models.add_argument(
        "--json", action="store_true", help="print one JSON object (models_dir, models) instead of lines"
    )
    models.add_argument(
        "--models-dir",
        metavar="DIR",
        help="look in DIR instead of IF_MODELS_DIR (default: the setting, ./models unless set)",
    )
    models.set_defaults(func=cmd_models)
    sub = models.add_subparsers(dest="models_command", metavar="{fetch}")
    fetch = sub.add_parser(
        "fetch",
        help="download a model from the Hugging Face hub into the models folder (needs "
        "IF_ALLOW_HUB_DOWNLOAD=true)",
        description="Download REPO_ID's config, tokenizer and safetensors weights into IF_MODELS_DIR/NAME "
        "with huggingface_hub, then check it as `instructforge models` does. Off unless "
        "IF_ALLOW_HUB_DOWNLOAD=true: training servers are often meant to run on vetted local models only.",
    )
    fetch.add_argument("repo_id", help="the hub repository, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    fetch.add_argument(
        "--name", help="folder name under the models directory (default: the part of REPO_ID after the /)"
    )
    fetch.add_argument("--revision", help="a branch, tag or commit of the repository (default: main)")
    fetch.add_argument(
        "--models-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,  # keeps `models --models-dir DIR fetch ...` from being reset to None
        help="download into DIR instead of IF_MODELS_DIR (default: the setting, ./models unless set)",
    )
    fetch.set_defaults(func=cmd_fetch)
