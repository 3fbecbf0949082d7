"""The rules of the house that imports can break silently."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute

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
    # The evaluation generator runs as a child process of the gpu worker, never inside the web process.
    assert "trainer.answer" not in loaded


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


# ---------------------------------------------------------------- thin routers (issue 15)

# A handler loads, calls a service and returns: its logic and queries live in a service, where workers, the CLI
# and tests reach them too. Lines counted from the first statement after the docstring to the end.
MAX_HANDLER_LINES = 12
# Session methods that read or write: in a router or a page they mean a query that belongs in a service.
DB_CALLS = {
    "execute",
    "scalars",
    "scalar",
    "get",
    "query",
    "add",
    "add_all",
    "delete",
    "merge",
    "flush",
    "commit",
}


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # Newer FastAPI keeps an included router as one route holding the original; older ones copy its routes.
        included = getattr(route, "original_router", None)
        yield from _api_routes(getattr(included or route, "routes", []))


def _body_lines(handler: Callable[..., Any]) -> int:
    node = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(handler)))).body[0]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return node.end_lineno - body[0].lineno + 1


def test_no_route_handler_is_longer_than_a_few_lines():
    from app.main import create_app

    # Our handlers: a library's own pages (fastapi-offline's /docs and /redoc) are not ours to thin.
    routes = [r for r in _api_routes(create_app().routes) if r.endpoint.__module__.startswith("app.")]
    assert len(routes) > 50  # the walk found the routes: a FastAPI upgrade must not empty this test
    long = {}
    for route in routes:
        name = f"{route.endpoint.__module__}.{route.endpoint.__qualname__}"
        if (lines := _body_lines(route.endpoint)) > MAX_HANDLER_LINES:
            long[name] = lines
    assert long == {}, f"handlers over {MAX_HANDLER_LINES} lines; move their logic into a service: {long}"


def _queries_in(path: Path) -> list[str]:
    """What in a module queries the database: imports from sqlalchemy (bar the Session type), `db.<call>(...)`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "sqlalchemy"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            names = [a.name for a in node.names]
            if node.module != "sqlalchemy.orm" or names != ["Session"]:
                found.append(f"from {node.module} import {', '.join(names)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "db"
            and node.func.attr in DB_CALLS
        ):
            found.append(f"line {node.lineno}: db.{node.func.attr}(...)")
    return found


def test_routers_and_pages_run_no_queries_of_their_own():
    modules = sorted([*ROOT.glob("app/*/router.py"), *(ROOT / "app" / "ui").rglob("*.py")])
    assert len(modules) > 10
    offenders = {path.relative_to(ROOT).as_posix(): found for path in modules if (found := _queries_in(path))}
    assert offenders == {}, f"routers and pages call services, which query: {offenders}"


def test_one_place_picks_the_insert_ignoring_duplicates_statement():
    """app.db.insert_ignoring is the only user of the dialects' insert constructs."""
    users = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "app").rglob("*.py")
        if "dialects.postgresql import insert" in path.read_text()
        or "dialects.sqlite import insert" in path.read_text()
    )
    assert users == ["app/db.py"]


def test_the_pipeline_reads_no_settings():
    """app/pipeline/ gets what it needs as arguments: the CLI and the service decide where it comes from."""
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "app" / "pipeline").rglob("*.py")
        if "app.config" in path.read_text()
    )
    assert offenders == []
