"""`--help` of every command describes every option, and the console script is the one pyproject names."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import import_module

import pytest

import app.cli
from app.cli import build_parser, main
from tests.cli.terminal import clean_env
from tests.procs import ROOT


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = [path for path, _ in _commands(build_parser())]


def test_every_command_is_found() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {
        "serve",
        "worker",
        "run",
        "db upgrade",
        "users create",
        "import",
        "dedup",
        "filter",
        "generate self-instruct",
        "generate evol",
        "generate judge",
        "models",
        "models fetch",
    } <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "instructforge")
def test_help_describes_every_option_and_argument(path: tuple[str, ...], capsys) -> None:
    parser = dict(_commands(build_parser()))[path]
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    undescribed = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            undescribed += [f"command {name}" for name, help in helps.items() if not help]
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            undescribed.append(name)
            continue
        described = "".join((action.help % vars(action)).split())
        assert described in text, f"{name}: its help is not shown"
    assert not undescribed, f"instructforge {' '.join(path)}: no help for {undescribed}"


def test_help_shows_defaults_where_they_matter(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "self-instruct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "tasks to keep (default: 100)" in text
    assert re.search(r"--json .*one JSON object", text)


def test_the_console_script_is_app_cli_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["instructforge"].partition(":")
    assert getattr(import_module(module), attribute) is app.cli.main


def test_python_dash_m_app_cli_runs_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "import", "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--skip-bad" in out.stdout and "the id of the dataset" in out.stdout


def test_the_command_line_loads_no_sqlalchemy_until_a_service_command_runs() -> None:
    # dedup, filter and generate work on files, without the service: they (and every --help) must not
    # pay for, or depend on, the database layer.
    code = (
        "import sys\nfrom app.cli import build_parser\nbuild_parser()\nimport app.cli.curate, app.cli.generate\n"
        "print(' '.join(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert not {"sqlalchemy", "fastapi", "torch"} & set(out.stdout.split())
