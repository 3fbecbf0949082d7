"""Files a parent process tails while training runs: status.json and metrics.jsonl; plus the loss curve."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from trainer.contract import CANCEL_FILE, METRICS_FILE, STATUS_FILE

State = Literal["running", "succeeded", "cancelled", "failed"]


def write_json_atomic(path: Path, data: Any) -> None:
    """A reader never sees a half-written file: write aside, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


class Reporter:
    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.metrics_path = output_dir / METRICS_FILE
        self.status_path = output_dir / STATUS_FILE

    def status(self, state: State, *, step: int, max_steps: int, error: str | None = None) -> None:
        write_json_atomic(
            self.status_path,
            {"state": state, "step": step, "max_steps": max_steps, "error": error, "updated_at": time.time()},
        )

    def reset_metrics(self, *, keep_up_to_step: int) -> None:
        """Drop lines past the checkpoint we resume from, so the curve continues without duplicates."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash
            if int(row.get("step", 0)) <= keep_up_to_step:
                kept.append(line)
        self.metrics_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def cancel_requested(self) -> bool:
        return (self.output_dir / CANCEL_FILE).exists()


def plot_loss_curve(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training boxes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per response token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
