"""Compute precision (issue 20): fp16 with loss scaling for GPUs without bf16, the decision per device, and the
older `bf16` field still read. CPU only here: the fp16 run below is real fp16 autocast with torch's GradScaler
on the CPU device; the GPU-only part is which precision `auto` picks, tested as the decision it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file

from trainer.methods import choose_precision, resolve_precision
from trainer.run import main


@pytest.mark.parametrize(
    ("requested", "legacy", "cuda", "bf16_ok", "chosen"),
    [
        ("auto", "auto", True, True, "bf16"),  # A100, H100, RTX 30xx+
        ("auto", "auto", True, False, "fp16"),  # V100, T4: fp16 with loss scaling, no longer fp32
        ("auto", "auto", False, False, "fp32"),  # CPU
        ("auto", True, True, False, "bf16"),  # the older field, as before
        ("auto", False, True, True, "fp32"),
        ("fp16", "auto", False, False, "fp16"),  # asked for: honoured, even on CPU
        ("fp32", "auto", True, True, "fp32"),
    ],
)
def test_auto_precision_is_bf16_where_supported_fp16_on_older_gpus_fp32_on_cpu(
    requested: str, legacy: bool | str, cuda: bool, bf16_ok: bool, chosen: str
) -> None:
    assert choose_precision(requested, legacy, cuda=cuda, bf16_ok=bf16_ok) == chosen


def test_the_older_bf16_field_is_read_and_a_contradiction_is_refused(make_config: Any) -> None:
    assert resolve_precision(make_config(bf16=True)) == "bf16"
    assert resolve_precision(make_config(bf16=False)) == "fp32"
    with pytest.raises(ValidationError, match="contradicts precision"):
        make_config(bf16=True, precision="fp16")
    with pytest.raises(ValidationError, match="contradicts precision"):
        make_config(bf16=False, precision="bf16")
    with pytest.raises(ValidationError, match="fp16 is not supported with parallelism=fsdp"):
        make_config(precision="fp16", parallelism="fsdp")


def test_fp16_run_scales_the_loss_and_keeps_fp32_master_weights(make_config: Any) -> None:
    config = make_config(precision="fp16", max_steps=3, lr=1e-2, dropout=0.0)
    summary = main(config)
    out = Path(config.output_dir)
    assert summary.state == "succeeded", summary
    assert any("fp16" in note and "loss scaling" in note for note in summary.notes)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    # the GradScaler's scale is logged every step: it starts at 2**16 and only halves on an overflow
    assert all(0 < row["loss_scale"] <= 2.0**16 for row in rows)
    assert all(row["loss"] == row["loss"] and row["loss"] < 100 for row in rows)  # finite, not nan
    # at least one step was applied (an overflow step is skipped), so the adapter moved from its zero init
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert any(bool(t.abs().sum() > 0) for k, t in weights.items() if "lora_B" in k)

    resolved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert resolved["precision"] == "fp16" and resolved["bf16"] is False
