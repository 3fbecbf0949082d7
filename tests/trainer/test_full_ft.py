"""method=full (issue 20): every weight trained, saved as a whole model folder that transformers, the trainer's
inference and `python -m trainer.answer` load; adapter-only options refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.answer import AnswerSpec, run
from trainer.contract import EXIT_OK
from trainer.infer import export_merged, generate, load_for_inference
from trainer.methods import load_tokenizer
from trainer.run import evaluate, main, prepare_data


def test_full_fine_tuning_trains_every_weight_and_saves_a_model_transformers_loads(
    make_config: Any, base_model: Path, models_root: Path, tmp_path: Path
) -> None:
    config = make_config(method="full", max_steps=3, lr=1e-3, val_fraction=0.2, sample_prompts=2, dropout=0.0)
    summary = main(config)
    assert summary.state == "succeeded", summary
    out = Path(config.output_dir)
    folder = out / "model"
    assert not (out / "adapter").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "prompt_format.json"):
        assert (folder / name).is_file(), name

    # plain transformers loads it, and every weight moved from the base's
    tuned = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert AutoTokenizer.from_pretrained(str(folder)).eos_token == "</s>"
    base = AutoModelForCausalLM.from_pretrained(str(base_model)).eval()
    base_weights = dict(base.named_parameters())
    unchanged = [n for n, p in tuned.named_parameters() if torch.equal(p, base_weights[n])]
    assert unchanged == []
    assert sum(p.numel() for p in tuned.parameters()) == sum(p.numel() for p in base.parameters())

    # the trainer's inference path loads the same model: the run's final eval loss and its samples again
    model, tokenizer, fmt = load_for_inference(out)
    prepared = prepare_data(config, load_tokenizer(out, local_only=True))
    loss = evaluate(
        model,
        prepared.val,
        batch_size=4,
        pad_id=tokenizer.pad_token_id,
        device=next(model.parameters()).device,
        amp=torch.no_grad,
    )
    assert summary.eval_loss is not None and loss == pytest.approx(summary.eval_loss, rel=1e-5)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert generate(model, tokenizer, fmt, [s["prompt"] for s in samples], max_new_tokens=128) == [
        s["generation"] for s in samples
    ]

    # evaluation's answer process reads the run's folder as it reads an adapter run's
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": str(i), "messages": s["prompt"]}) + "\n" for i, s in enumerate(samples)),
        encoding="utf-8",
    )
    answers_dir = tmp_path / "answers"
    spec = AnswerSpec(
        base_model=None,
        models_dir=str(models_root),
        adapter_dir=str(out),
        prompts_path=str(prompts),
        output_dir=str(answers_dir),
        max_new_tokens=128,
    )
    assert run(spec) == EXIT_OK
    answers = [json.loads(line) for line in (answers_dir / "answers.jsonl").read_text().splitlines()]
    assert sorted(a["answer"] for a in answers) == sorted(s["generation"] for s in samples)

    with pytest.raises(ValueError, match="no adapter to merge"):
        export_merged(out)


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ({"merge": True}, "merge is not possible for method=full"),
        ({"target_modules": ["q_proj"]}, "method=full trains every weight"),
    ],
)
def test_full_fine_tuning_refuses_adapter_only_options(
    make_config: Any, option: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        make_config(method="full", **option)


def test_a_cancelled_full_fine_tuning_resumes_on_the_same_loss_curve(
    make_config: Any, tmp_path: Path
) -> None:
    def config(name: str) -> Any:
        return make_config(method="full", max_steps=4, val_fraction=0.0, output_dir=str(tmp_path / name))

    def losses(out: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    whole = config("whole")
    assert main(whole).state == "succeeded"
    split = config("split")
    out = Path(split.output_dir)

    def cancel_after_two(step: int) -> None:
        if step == 2:
            (out / "CANCEL").touch()

    assert main(split, on_step=cancel_after_two).state == "cancelled"
    (out / "CANCEL").unlink()
    resumed = main(split)
    assert resumed.state == "succeeded" and resumed.resumed_from_step == 2
    assert losses(out) == pytest.approx(losses(Path(whole.output_dir)), rel=1e-5)
