"""The rules of the house that imports can break silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"IF_DATABASE_URL": "sqlite:///:memory:", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_the_web_process_never_imports_torch():
    loaded = _modules_after("from app.main import create_app\ncreate_app()")
    assert not {"torch", "transformers", "peft"} & loaded


def test_the_pipeline_imports_neither_sqlalchemy_nor_fastapi_nor_torch():
    code = "\n".join(
        f"import app.pipeline.{m}"
        for m in (
            "rouge",
            "rules",
            "textnorm",
            "langid",
            "formats",
            "llm",
            "llm.config",
            "llm.calls",
            "llm.cache",
            "llm.limits",
            "llm.http_client",
            "llm.gateway",
            "llm.loop",
            "self_instruct",
            "instances",
            "evol",
            "judge",
            "convert",
            "mix",
            "listparse",
        )
    )
    loaded = _modules_after(code)
    assert not {"sqlalchemy", "fastapi", "torch"} & loaded


def test_the_trainer_imports_nothing_from_app():
    loaded = _modules_after("import trainer.run, trainer.infer, trainer.config")
    assert not any(m == "app" or m.startswith("app.") for m in loaded)


def test_the_trainer_contract_loads_no_torch_for_the_job_that_supervises_the_trainer():
    # app/training/jobs.py reads the trainer's file names and exit codes from trainer.contract; it runs
    # the trainer as a child process, so that a cancel or crash frees the GPU, and must not load torch itself
    loaded = _modules_after("import trainer.contract\nimport app.training.jobs")
    assert not {"torch", "transformers", "peft"} & loaded
    assert "trainer.contract" in loaded


def test_nothing_in_app_imports_from_workers():
    """The job contract (app.jobs.context) and the broker (app.jobs.broker) are the app's; workers/ only
    claims, heartbeats and finishes. A domain that imported the worker would depend on its process."""
    import ast

    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "workers"]
    assert offenders == []
