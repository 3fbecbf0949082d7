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
from trainer.formats import FAMILY_TEMPLATES, check_chat_template
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


# --------------------------------------------------------------------------------------------------
# chat templates

# a user's own template: "### role" headers, the reply ended by EOS
USER_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{% for m in messages %}{{ m['content'] }}", "does not compile"),
        (
            "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}\n{% endif %}{% endfor %}",
            "does not render the system messages",
        ),
        ("{% for m in messages | reverse %}{{ m['content'] }}\n{% endfor %}", "rewrites earlier turns"),
        ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ],
)
def test_a_chat_template_that_cannot_train_is_refused_saying_why(
    make_config: Any, template: str, words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        make_config(chat_template=template)


def test_a_user_chat_template_from_a_file_labels_only_the_replies(
    make_config: Any, base_model: Path, messages_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "template.jinja"
    path.write_text(USER_TEMPLATE, encoding="utf-8")
    with pytest.raises(ValidationError, match="chat_template replaces prompt_format=alpaca"):
        make_config(chat_template=str(path), prompt_format="alpaca")
    config = make_config(chat_template=str(path), dataset_path=str(messages_file), val_fraction=0.0)
    tokenizer = load_tokenizer(base_model, local_only=True)
    prepared = prepare_data(config, tokenizer)

    assert prepared.fmt.kind == "chat_template" and prepared.fmt.chat_template == USER_TEMPLATE
    sample = prepared.train[0]
    text = tokenizer.decode(sample.input_ids)
    trained = tokenizer.decode(
        [t for t, lab in zip(sample.input_ids, sample.labels, strict=True) if lab != -100]
    )
    assert "### user\n" in text and "### assistant\n" in text
    assert "###" not in trained and trained.endswith("</s>")  # the replies and their EOS, no headers


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATES))
def test_every_built_in_family_template_passes_the_chat_template_check(family: str) -> None:
    check_chat_template(FAMILY_TEMPLATES[family])


def test_a_family_format_is_used_when_its_tokens_exist_and_refused_when_they_do_not(
    make_config: Any, base_model: Path, messages_file: Path
) -> None:
    tokenizer = load_tokenizer(base_model, local_only=True)
    prepared = prepare_data(make_config(prompt_format="zephyr", dataset_path=str(messages_file)), tokenizer)
    assert prepared.fmt.chat_template == FAMILY_TEMPLATES["zephyr"]
    assert "<|assistant|>\n" in tokenizer.decode(prepared.train[0].input_ids)
    with pytest.raises(ValueError, match=r"needs the tokens \['<\|start_header_id\|>'"):
        prepare_data(make_config(prompt_format="llama3"), load_tokenizer(base_model, local_only=True))


# --------------------------------------------------------------------------------------------------
# trust_remote_code

REMOTE_CODE = """
from transformers import LlamaConfig, LlamaForCausalLM


class RemoteConfig(LlamaConfig):
    model_type = "remote-llama"


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
"""


def test_trust_remote_code_is_what_lets_a_model_folders_own_code_load(
    base_model: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    folder = Path(shutil.copytree(base_model, tmp_path / "remote-llama"))
    (folder / "remote_llama.py").write_text(REMOTE_CODE, encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="remote-llama",
        architectures=["RemoteForCausalLM"],
        auto_map={
            "AutoConfig": "remote_llama.RemoteConfig",
            "AutoModelForCausalLM": "remote_llama.RemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match="trust_remote_code"):
        load_base_model(folder, dtype=torch.float32, attn_implementation="sdpa")
    model = load_base_model(folder, dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=True)
    assert type(model).__name__ == "RemoteForCausalLM"
