"""End-to-end training runs on a tiny random Llama: convergence, every method, resume, cancel, export."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.checkpoint import checkpoint_dirs
from trainer.config import TrainConfig
from trainer.formats import PromptFormat
from trainer.infer import generate, load_for_inference
from trainer.methods import load_tokenizer
from trainer.run import evaluate, main, prepare_data

REPO = Path(__file__).resolve().parents[2]


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _status(out: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((out / "status.json").read_text(encoding="utf-8"))
    return status


def _eval_loss(model, config: TrainConfig) -> float:
    """Validation loss of `model` on the run's own held-out split, rebuilt from the saved tokenizer."""
    tokenizer = load_tokenizer(Path(config.output_dir), local_only=True)
    prepared = prepare_data(config, tokenizer)
    loss = evaluate(
        model,
        prepared.val,
        batch_size=4,
        pad_id=tokenizer.pad_token_id,
        device=next(model.parameters()).device,
        amp=torch.no_grad,
    )
    assert loss is not None
    return loss


def test_lora_halves_the_loss_and_greedy_generation_reproduces_trained_responses(make_config, alpaca_file):
    config = make_config(
        max_steps=100,
        lr=1e-2,
        r=16,
        alpha=32,
        dropout=0.0,
        warmup_ratio=0.05,
        val_fraction=0.0,
        logging_steps=10,
        merge=True,
    )
    summary = main(config)
    out = Path(config.output_dir)
    assert summary.state == "succeeded"
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(10, 101, 10))
    assert rows[-1]["loss"] <= rows[0]["loss"] / 2

    model, tokenizer, fmt = load_for_inference(out)
    records = json.loads(alpaca_file.read_text(encoding="utf-8"))
    prompts = [
        [{"role": "user", "content": r["instruction"], **({"input": r["input"]} if r["input"] else {})}]
        for r in records
    ]
    outputs = generate(model, tokenizer, fmt, prompts, max_new_tokens=48)
    exact = sum(o == r["output"] for o, r in zip(outputs, records, strict=True))
    # batched (left-padded) generation with the saved template reproduces what was trained
    assert exact >= 15, list(zip(outputs, [r["output"] for r in records], strict=True))

    # merged export: same logits as base + adapter, written in the base's own dtype
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    assert merged.dtype == AutoModelForCausalLM.from_pretrained(config.base_model).dtype
    probe = torch.tensor([tokenizer("### Instruction:\nSay hi.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(probe).logits, model(input_ids=probe).logits, atol=1e-4, rtol=1e-4)
    assert PromptFormat.load(out / "merged" / "prompt_format.json") == fmt


@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "ia3", "prefix", "prompt", "bitfit"])
def test_every_method_trains_saves_and_reloads_with_identical_outputs(make_config, method):
    config = make_config(method=method, max_steps=3, lr=1e-2, val_fraction=0.2, sample_prompts=2, dropout=0.0)
    summary = main(config)
    out = Path(config.output_dir)
    assert summary.state == "succeeded", summary
    assert _status(out) == {**_status(out), "state": "succeeded", "step": 3, "max_steps": 3, "error": None}
    for name in (
        "train_config.yaml",
        "summary.json",
        "loss_curve.png",
        "prompt_format.json",
        "tokenizer.json",
    ):
        assert (out / name).is_file(), name
    adapter = out / "adapter"
    if method == "bitfit":
        assert json.loads((adapter / "bitfit_config.json").read_text())["method"] == "bitfit"
        assert (adapter / "bitfit.safetensors").is_file()
    else:
        assert (adapter / "adapter_config.json").is_file()
        assert (adapter / "adapter_model.safetensors").is_file()

    model, tokenizer, fmt = load_for_inference(out)
    # the run's final eval loss came from the in-memory model; the reloaded one must give the same logits
    assert summary.eval_loss is not None
    assert _eval_loss(model, config) == pytest.approx(summary.eval_loss, rel=1e-6)
    base = AutoModelForCausalLM.from_pretrained(config.base_model).eval()
    assert _eval_loss(base, config) != pytest.approx(summary.eval_loss, rel=1e-5), "adapter had no effect"

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    regenerated = generate(model, tokenizer, fmt, [s["prompt"] for s in samples], max_new_tokens=128)
    assert regenerated == [s["generation"] for s in samples]


def test_cancel_stops_between_steps_and_resume_continues_the_same_loss_curve(
    make_config, tmp_path, chat_base_model, messages_file
):
    common = {
        "base_model": str(chat_base_model),
        "dataset_path": str(messages_file),
        "max_steps": 8,
        "grad_accum": 2,
        "batch_size": 2,
        "dropout": 0.1,  # dropout draws random numbers: the RNG state must come back with the checkpoint
        "lr": 5e-3,
        "eval_steps": 4,
    }
    straight = make_config(output_dir=str(tmp_path / "straight"), **common)
    assert main(straight).state == "succeeded"
    reference = _metrics(Path(straight.output_dir))

    config = make_config(output_dir=str(tmp_path / "resumed"), **common)
    out = Path(config.output_dir)

    def cancel_after(step: int) -> None:
        if step == 3:
            (out / "CANCEL").touch()

    cancelled = main(config, on_step=cancel_after)
    assert cancelled.state == "cancelled"
    assert cancelled.step == 3
    assert _status(out)["state"] == "cancelled" and _status(out)["step"] == 3
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step-00000003"]
    assert not (out / "adapter").exists()

    (out / "CANCEL").unlink()
    resumed = main(config)
    assert resumed.state == "succeeded"
    assert resumed.resumed_from_step == 3
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == list(range(1, 9))
    for got, want in zip(rows, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
        assert got["learning_rate"] == pytest.approx(want["learning_rate"])
        if want.get("eval_loss") is None:
            assert got.get("eval_loss") is None
        else:
            assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5)
    fmt = json.loads((out / "prompt_format.json").read_text())
    assert fmt["kind"] == "chat_template"
    assert fmt["chat_template"] == AutoTokenizer.from_pretrained(str(chat_base_model)).chat_template


def test_new_chatml_tokens_resize_embeddings_and_are_saved(make_config, base_model, messages_file):
    config = make_config(dataset_path=str(messages_file), max_steps=3, lr=5e-3, prompt_format="auto")
    summary = main(config)
    out = Path(config.output_dir)
    assert summary.prompt_format == "chatml"  # multi-turn data, tokenizer without a chat template
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    base_vocab = len(AutoTokenizer.from_pretrained(str(base_model)))
    assert len(tokenizer) == base_vocab + 2
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}  # noqa: SIM118
    embed = [s for k, s in shapes.items() if "embed_tokens" in k]
    head = [s for k, s in shapes.items() if "lm_head" in k]
    assert embed and embed[0][0] == base_vocab + 2
    assert head and head[0][0] == base_vocab + 2
    model, _tok, fmt = load_for_inference(out)
    assert _eval_loss(model, config) == pytest.approx(summary.eval_loss, rel=1e-6)
    assert fmt.stop_tokens[0] == "<|im_end|>"


def _run_cli(config_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def test_cli_exit_codes_cancelled_3_failed_1(make_config, tmp_path):
    config = make_config(output_dir=str(tmp_path / "cli"))
    out = Path(config.output_dir)
    out.mkdir(parents=True)
    (out / "CANCEL").touch()  # cancel asked for before the first step
    path = tmp_path / "cfg.json"
    path.write_text(config.model_dump_json(), encoding="utf-8")
    proc = _run_cli(path)
    assert proc.returncode == 3, proc.stderr
    assert _status(out)["state"] == "cancelled" and _status(out)["step"] == 0

    broken = make_config(output_dir=str(tmp_path / "broken"), dataset_path=str(tmp_path / "missing.jsonl"))
    broken.to_yaml(tmp_path / "broken.yaml")
    proc = _run_cli(tmp_path / "broken.yaml")
    assert proc.returncode == 1
    status = _status(Path(broken.output_dir))
    assert status["state"] == "failed"
    assert "FileNotFoundError" in status["error"] and "Traceback" in status["error"]


def test_base_model_outside_models_dir_is_refused(tmp_path, base_model, models_root):
    inside = TrainConfig(
        base_model=base_model.name, models_dir=str(models_root), dataset_path="d", output_dir=str(tmp_path)
    )
    assert inside.resolved_base_model() == base_model.resolve()
    outside = inside.model_copy(update={"base_model": "../../etc"})
    with pytest.raises(ValueError, match="outside models_dir"):
        outside.resolved_base_model()
    absent = inside.model_copy(update={"models_dir": None, "base_model": "meta-llama/Llama-3-8B"})
    with pytest.raises(FileNotFoundError, match="hub downloads are disabled"):
        absent.resolved_base_model()


def test_config_round_trips_through_yaml_and_documents_every_field(tmp_path):
    config = TrainConfig(base_model="m", dataset_path="d.jsonl", output_dir="o", method="dora", packing=False)
    config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == config
    assert all(field.description for field in TrainConfig.model_fields.values())
    with pytest.raises(ValueError, match="merge is not possible"):
        TrainConfig(base_model="m", dataset_path="d", output_dir="o", method="prompt", merge=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU (4-bit NF4 weights)")
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="QLoRA needs bitsandbytes")
def test_qlora_trains_in_4bit_and_merges_into_the_16bit_base(make_config):
    config = make_config(method="qlora", max_steps=3, lr=5e-3, val_fraction=0.2, merge=True)
    summary = main(config)
    assert summary.state == "succeeded"
    out = Path(config.output_dir)
    model, _tokenizer, _fmt = load_for_inference(out)
    # inference reloads the 16-bit base, so the loss is close to (not equal to) the 4-bit training one
    assert _eval_loss(model, config) == pytest.approx(summary.eval_loss, rel=0.1)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    assert "quantization_config" not in merged.config.to_dict()
