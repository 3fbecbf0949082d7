"""`python -m trainer CONFIG.yaml` (or `--config CONFIG.json`): exit 0 succeeded, 1 failed, 3 cancelled."""

from __future__ import annotations

import argparse
import sys

from trainer.contract import EXIT_FAILED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Standalone SFT trainer.")
    parser.add_argument("config_path", nargs="?", help="TrainConfig as YAML or JSON")
    parser.add_argument("--config", dest="config_flag", help="TrainConfig as YAML or JSON")
    args = parser.parse_args(argv)
    if not (args.config_path or args.config_flag):
        parser.error("a config file is required")
    return args


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from trainer.config import TrainConfig
    from trainer.run import main

    config = TrainConfig.from_file(args.config_flag or args.config_path)
    try:
        summary = main(config)
    except Exception as exc:  # status.json already holds the traceback
        print(f"training failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"training {summary.state} at step {summary.step}/{summary.max_steps}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(cli())
