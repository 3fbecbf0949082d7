"""`instructforge` command line: serve, worker, run (everything, embedded), users, db, import, the
pipeline commands (dedup, filter, generate) that work without the service, and models (base models for
training)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    # The commands' modules are imported here, not at the top: `import app.cli` stays cheap for the console
    # script, and only parsing pays for the pipeline's imports (openai, rouge) that every command's --help needs.
    from app.cli import curate, evaluate, generate, models, service

    parser = argparse.ArgumentParser(prog="instructforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    service.add_cli(sub)
    curate.add_cli(sub)
    generate.add_cli(sub)
    evaluate.add_cli(sub)
    models.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `instructforge` (pyproject.toml [project.scripts])."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)
