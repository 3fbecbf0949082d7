"""`instructforge models` on a models directory of tiny local models and broken folders; `models fetch` never
reaches the internet here: refused when hub downloads are off, and a clean error when the hub is unreachable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from tests.cli.terminal import INSTRUCTFORGE, clean_env
from tests.model_folders import REFUSED, USABLE, build_models_dir
from tests.procs import ROOT

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models_dir(tmp_path_factory.mktemp("models"))


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INSTRUCTFORGE, *args], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_models_lists_each_folder_on_one_line_with_its_verdict(models_dir: Path) -> None:
    out = _run("models", IF_MODELS_DIR=str(models_dir))
    lines = out.stdout.splitlines()
    assert lines[0] == f"models directory: {models_dir.resolve()}"
    by_name = {line.split()[1].rstrip(":"): line for line in lines[1:-1]}
    assert set(by_name) == set(USABLE) | set(REFUSED)
    for name, words in REFUSED.items():
        assert by_name[name].startswith(f"refused  {name}: ") and words in by_name[name], by_name[name]
    plain, chat = by_name["tiny-llama"], by_name["tiny-llama-chat"]
    assert plain.startswith("ok       tiny-llama: llama (LlamaForCausalLM); 0.2M parameters;")
    assert (
        "chat template: no, prompt format: alpaca for single-turn records, ChatML for conversations" in plain
    )
    assert "chat template: yes, prompt format: the tokenizer's chat template" in chat
    assert lines[-1] == f"{len(by_name)} found, 2 usable, {len(REFUSED)} refused"
    assert out.returncode == 1  # a refused folder is a problem to fix


def test_models_json_counts_parameters_exactly_from_the_safetensors_headers(models_dir: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM

    code = main(["models", "--json", "--models-dir", str(models_dir / ".." / models_dir.name)])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["models_dir"] == str(models_dir.resolve())
    checks = {m["name"]: m for m in data["models"]}
    loaded = AutoModelForCausalLM.from_pretrained(str(models_dir / "tiny-llama"))
    tiny = checks["tiny-llama"]
    assert tiny["ok"] and tiny["reason"] is None
    assert tiny["parameters"] == sum(p.numel() for p in loaded.parameters())
    assert tiny["dtype"] == "F32" and tiny["tokenizer"] == "tokenizer.json" and not tiny["chat_template"]
    assert tiny["size_bytes"] == sum(p.stat().st_size for p in (models_dir / "tiny-llama").iterdir())
    assert checks["tiny-llama-chat"]["chat_template"]
    assert not checks["no-tokenizer"]["ok"] and "missing tokenizer" in checks["no-tokenizer"]["reason"]


def test_models_exits_zero_when_every_folder_loads(models_dir: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "tiny-llama").symlink_to(models_dir / "tiny-llama", target_is_directory=True)
    assert main(["models", "--models-dir", str(good)]) == 1  # a link out of the models directory is refused
    assert "outside the models directory" in capsys.readouterr().out
    (good / "tiny-llama").unlink()
    import shutil

    shutil.copytree(models_dir / "tiny-llama", good / "org" / "tiny-llama")
    assert main(["models", "--models-dir", str(good)]) == 0
    assert "ok       org/tiny-llama: llama" in capsys.readouterr().out


def test_an_empty_models_directory_says_how_to_get_a_model(tmp_path: Path) -> None:
    out = _run("models", "--models-dir", str(tmp_path))
    assert out.returncode == 1 and "0 found, 0 usable, 0 refused" in out.stdout
    assert "instructforge models fetch REPO_ID" in out.stderr and "docs/training.md" in out.stderr


def test_fetch_is_refused_while_hub_downloads_are_disabled(tmp_path: Path) -> None:
    out = _run("models", "fetch", "HuggingFaceTB/SmolLM2-135M-Instruct", IF_MODELS_DIR=str(tmp_path))
    assert out.returncode == 2
    assert "hub downloads are disabled" in out.stderr and "IF_ALLOW_HUB_DOWNLOAD=true" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing downloaded


def test_fetch_with_the_hub_unreachable_fails_in_one_line(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE makes huggingface_hub refuse before any connection: this test never leaves the machine
    out = _run(
        "models",
        "fetch",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        IF_MODELS_DIR=str(tmp_path),
        IF_ALLOW_HUB_DOWNLOAD="true",
        HF_HUB_OFFLINE="1",
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: could not download HuggingFaceTB/SmolLM2-135M-Instruct: ")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("repo_id", ["../etc", "no-owner", "a/b/c", "owner/.hidden"])
def test_fetch_refuses_repository_ids_that_are_not_owner_slash_name(repo_id: str, tmp_path: Path) -> None:
    out = _run("models", "fetch", repo_id, IF_MODELS_DIR=str(tmp_path), IF_ALLOW_HUB_DOWNLOAD="true")
    assert out.returncode == 2 and "expected REPO_ID as owner/name" in out.stderr


def test_the_model_check_loads_neither_torch_nor_transformers(models_dir: Path) -> None:
    code = (
        "import sys\nfrom pathlib import Path\nfrom app.training.base_models import list_models\n"
        f"assert sum(m.ok for m in list_models(Path({str(models_dir)!r}))) == 2\n"
        "print(' '.join(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert not {"torch", "transformers", "sqlalchemy"} & set(out.stdout.split())
