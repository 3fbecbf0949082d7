"""Two-stage training (issue 20): a run continues from an earlier run's adapter (init_adapter), with the earlier
run's tokenizer and prompt format; an adapter of another method is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainer.methods import check_init_adapter
from trainer.run import main


def test_second_stage_starts_from_the_first_stages_adapter_tokens_and_prompt_format(
    make_config: Any, tmp_path: Path, messages_file: Path, alpaca_file: Path
) -> None:
    # stage 1: multi-turn data on a tokenizer without a chat template -> ChatML, whose tokens get added
    first = make_config(dataset_path=str(messages_file), output_dir=str(tmp_path / "broad"), max_steps=3)
    assert main(first).state == "succeeded"
    first_dir = Path(first.output_dir)
    assert json.loads((first_dir / "prompt_format.json").read_text())["kind"] == "chatml"

    # stage 2: single-turn data (alone it would get the alpaca format), a learning rate too small to move
    # anything: the adapter it saves is the one it started from
    second = make_config(
        dataset_path=str(alpaca_file),
        output_dir=str(tmp_path / "domain"),
        init_adapter=str(first_dir / "adapter"),
        max_steps=1,
        lr=1e-12,
        r=4,  # the earlier adapter's own rank (8) wins: its weights are what continues
    )
    summary = main(second)
    assert summary.state == "succeeded", summary
    second_dir = Path(second.output_dir)
    assert any("continued from the adapter" in note for note in summary.notes)
    assert json.loads((second_dir / "prompt_format.json").read_text())["kind"] == "chatml"
    resolved = yaml.safe_load((second_dir / "train_config.yaml").read_text())
    assert resolved["init_adapter"] == str(first_dir / "adapter")

    before = load_file(str(first_dir / "adapter" / "adapter_model.safetensors"))
    after = load_file(str(second_dir / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and all(bool(before[k].abs().sum() > 0) for k in lora_b)  # a fresh adapter's B is zero
    for key in before:
        assert torch.allclose(before[key], after[key], atol=1e-6), key


def test_an_adapter_of_another_method_or_no_adapter_is_refused(
    make_config: Any, tmp_path: Path, alpaca_file: Path
) -> None:
    first = make_config(method="ia3", output_dir=str(tmp_path / "ia3"), max_steps=1, val_fraction=0.0)
    assert main(first).state == "succeeded"
    adapter = str(Path(first.output_dir) / "adapter")
    assert check_init_adapter(adapter, "ia3") == Path(adapter).resolve()
    with pytest.raises(ValueError, match="is a IA3 adapter; method=lora trains LORA"):
        check_init_adapter(adapter, "lora")
    with pytest.raises(ValueError, match="holds no adapter"):
        check_init_adapter(str(tmp_path), "lora")
    with pytest.raises(ValueError, match="method=full continues from an earlier run's model/"):
        make_config(method="full", init_adapter=adapter)
