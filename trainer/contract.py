"""What the trainer and the process that runs it agree on: the names in output_dir, exit codes, code version.

The gpu worker's job (app/training/jobs.py) tails these files and reads the exit code while the trainer
writes them, so both import the names from here instead of repeating literals that could drift apart.
Standard library only: importing this module must never load torch (tests/test_layering.py checks it).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

# Written by the trainer while it runs; a parent process tails them.
STATUS_FILE = "status.json"  # {"state", "step", "max_steps", "error"}, replaced atomically after every step
METRICS_FILE = "metrics.jsonl"  # one line per logging step, appended
# Created by the parent: the trainer stops before its next step, checkpoints and exits EXIT_CANCELLED.
CANCEL_FILE = "CANCEL"

# Written by the trainer once it stops (see docs/training.md, "Artifacts").
SUMMARY_FILE = "summary.json"  # also written for a cancelled run
TRAIN_CONFIG_FILE = "train_config.yaml"  # the resolved config: what inference and merging rebuild from
PROMPT_FORMAT_FILE = "prompt_format.json"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_FILE = (
    "samples.jsonl"  # {"step", "prompt": [messages], "reference", "generation"} per held-out prompt
)
LOSS_CURVE_FILE = "loss_curve.png"
MERGED_DIR = "merged"
MODEL_DIR = "model"  # method=full: the whole fine-tuned model (weights, tokenizer, prompt_format.json)

# `python -m trainer.answer SPEC.json` (evaluation generation, issue 18): the spec is a JSON object (see
# trainer/answer.py); it writes into the spec's output_dir, and honours CANCEL_FILE and STATUS_FILE as training.
ANSWER_SPEC_FILE = "answer_spec.json"
ANSWERS_FILE = (
    "answers.jsonl"  # {"id", "answer", "tokens"} per prompt, appended as they come; resume skips ids here
)
VAL_METRICS_FILE = "val_metrics.json"  # {"loss", "perplexity", "tokens", "records"} on the validation records

# `python -m trainer` exit codes: a supervisor tells a cancel from a failure without parsing files.
EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3


def code_version() -> str:
    """The package version plus the git commit when the trainer runs from a checkout."""
    try:
        version = importlib.metadata.version("instructforge")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version
