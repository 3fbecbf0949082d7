"""Longer context and prompt formats (issue 20): RoPE scaling reaches the model in training and inference and is
refused for models without rotary embeddings; user chat templates are validated before a run starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from transformers import GPT2Config

from trainer.config import TrainConfig
from trainer.infer import load_for_inference
from trainer.methods import load_base_model, load_tokenizer
from trainer.run import evaluate, main, prepare_data


def _eval_loss(model: Any, config: TrainConfig) -> float:
    tokenizer = load_tokenizer(Path(config.output_dir), local_only=True)
    loss = evaluate(
        model,
        prepare_data(config, tokenizer).val,
        batch_size=4,
        pad_id=tokenizer.pad_token_id,
        device=torch.device("cpu"),
        amp=torch.no_grad,
    )
    assert loss is not None
    return loss


def test_rope_scaling_reaches_the_model_in_training_and_in_inference(
    make_config: Any, base_model: Path
) -> None:
    config = make_config(max_steps=2, val_fraction=0.2, rope_scaling={"type": "linear", "factor": 4.0})
    summary = main(config)
    assert summary.state == "succeeded", summary
    out = Path(config.output_dir)
    assert yaml.safe_load((out / "train_config.yaml").read_text())["rope_scaling"]["factor"] == 4.0

    model, _tokenizer, _fmt = load_for_inference(out)
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["factor"] == 4.0
    # the run's own eval loss is reproduced only with the scaled positions: training used them too
    assert _eval_loss(model, config) == pytest.approx(summary.eval_loss, rel=1e-6)
    model.base_model.model.model.rotary_emb.inv_freq *= 4.0  # undo the linear scaling
    assert _eval_loss(model, config) != pytest.approx(summary.eval_loss, rel=1e-4)

    yarn = load_base_model(
        base_model,
        dtype=torch.float32,
        attn_implementation="sdpa",
        rope_scaling={"type": "yarn", "factor": 2.0},
    )
    assert yarn.config.rope_parameters["rope_type"] == "yarn"
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == 1024


def test_rope_scaling_is_refused_for_a_model_without_rotary_embeddings_and_for_bad_settings(
    tmp_path: Path, make_config: Any
) -> None:
    gpt2 = tmp_path / "tiny-gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(str(gpt2))
    with pytest.raises(ValueError, match="'gpt2' has no rotary position embeddings"):
        load_base_model(
            gpt2,
            dtype=torch.float32,
            attn_implementation="sdpa",
            rope_scaling={"type": "linear", "factor": 2.0},
        )
    for bad in ({"type": "linear", "factor": 1.0}, {"type": "ntk", "factor": 2.0}, {"factor": 2.0}):
        with pytest.raises(ValidationError, match="rope_scaling"):
            make_config(rope_scaling=bad)
