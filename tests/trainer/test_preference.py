"""Preference training (DPO, ORPO, KTO, SimPO) on the tiny local Llama: learning, masks, reference, TRL parity."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.trainer.conftest import identity_conversations, seed_task_records
from trainer.batching import collate
from trainer.config import TrainConfig
from trainer.formats import IGNORE_INDEX, PromptFormat, build_format, encode_prompt
from trainer.infer import load_for_inference
from trainer.methods import build_peft_model, load_tokenizer
from trainer.preference import (
    PairRow,
    References,
    compute_references,
    encode_pair,
    evaluate_preferences,
    kto_batch_loss,
    load_preference_data,
    pair_batch_loss,
    prepare_preference_data,
    reference_logps,
    sequence_logps,
)
from trainer.run import main


def _short_seed_tasks(n: int) -> list[dict[str, str]]:
    short = [r for r in seed_task_records() if len(r["instruction"]) + len(r["input"]) < 160]
    short = [r for r in short if 8 <= len(r["output"]) <= 60][:n]
    assert len(short) == n
    return short


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """28 real seed tasks: chosen is the task's own answer, rejected another task's answer."""
    tasks = _short_seed_tasks(28)
    rows = []
    for i, r in enumerate(tasks):
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        rows.append(
            {"prompt": prompt, "chosen": r["output"], "rejected": tasks[(i + 7) % len(tasks)]["output"]}
        )
    path = tmp_path_factory.mktemp("pref") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def few_pairs_file(pairs_file: Path) -> Path:
    """The first 8 pairs: for tests of the run's mechanics rather than of learning."""
    path = pairs_file.with_name("few.jsonl")
    path.write_text(
        "".join(pairs_file.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8"
    )
    return path


@pytest.fixture
def pref_config(tmp_path: Path, base_model: Path, pairs_file: Path) -> Any:
    def build(**overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "base_model": str(base_model),
            "dataset_path": str(pairs_file),
            "output_dir": str(tmp_path / "run"),
            "objective": "dpo",
            "max_seq_len": 256,
            "batch_size": 8,
            "grad_accum": 1,
            "max_steps": 4,
            "lr": 5e-3,
            "warmup_ratio": 0.0,
            "val_fraction": 0.0,
            "logging_steps": 1,
            "eval_steps": 0,
            "save_steps": 0,
            "sample_prompts": 0,
            "gradient_checkpointing": False,
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
        }
        values.update(overrides)
        return TrainConfig(**values)

    return build


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _lora_policy(base_model: Path, config: TrainConfig) -> Any:
    """The base wrapped in LoRA whose B matrices are random: an adapter that changes the outputs."""
    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    model = build_peft_model(model, config, total_steps=1, new_tokens=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


# --------------------------------------------------------------------------------------------------


def test_dpo_raises_preference_accuracy_on_its_pairs_to_90_percent_with_a_positive_margin(pref_config):
    config = pref_config(max_steps=12, logging_steps=4)
    summary = main(config)
    out = Path(config.output_dir)
    assert summary.state == "succeeded", summary
    assert summary.samples_train == 28
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [4, 8, 12]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(key in r for r in rows), key

    # re-measured on the 28 training pairs with the saved adapter, against the base as reference
    model, tokenizer, fmt = load_for_inference(out)
    data = prepare_preference_data(config, tokenizer, fmt)
    cpu, pad = torch.device("cpu"), tokenizer.pad_token_id
    refs = compute_references(config, data, model, pad_id=pad, device=cpu, context=model.disable_adapter)
    stats = evaluate_preferences(config, model, data, refs, split="train", pad_id=pad, device=cpu)
    measured = stats.row()
    assert measured["rewards/accuracies"] >= 0.9
    assert measured["rewards/margins"] > 0
    assert rows[-1]["rewards/margins"] > 0


def test_reference_log_probs_are_the_base_models_not_the_adapters(base_model, pref_config):
    config = pref_config()
    tokenizer = load_tokenizer(base_model, local_only=True)
    data = prepare_preference_data(config, tokenizer)
    seqs = [p.chosen for p in data.train_pairs[:6]] + [p.rejected for p in data.train_pairs[:6]]
    pad = tokenizer.pad_token_id
    policy = _lora_policy(base_model, config)
    cpu = torch.device("cpu")
    refs = reference_logps(policy, seqs, batch_size=4, pad_id=pad, device=cpu, context=policy.disable_adapter)

    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32).eval()
    batch = collate(seqs, [[i] for i in range(len(seqs))], pad_id=pad, packed=False)
    with torch.no_grad():
        want, _ = sequence_logps(base, batch, full_logits=False)
        # the same numbers by hand: log_softmax of the full logits, gathered at each target
        logits = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        targets = batch.labels[:, 1:]
        mask = targets != IGNORE_INDEX
        gathered = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        by_hand = (gathered * mask).sum(-1)
        adapted, _ = sequence_logps(policy.eval(), batch, full_logits=False)
    torch.testing.assert_close(refs, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(want, by_hand, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(adapted, want, atol=1e-2), (
        "the adapter changes nothing: the test proves nothing"
    )


@pytest.mark.parametrize("template", [False, True], ids=["alpaca-chatml", "chat-template"])
def test_pair_masks_train_only_the_final_reply_and_its_end_of_turn_token(
    plain_tokenizer, chat_tokenizer, template
):
    tok = copy.deepcopy(chat_tokenizer if template else plain_tokenizer)
    conv = identity_conversations()[0]["messages"]
    multi = conv[:3] if len(conv) >= 3 else conv
    assert [m["role"] for m in multi[:3]] == ["user", "assistant", "user"], multi
    single = [{"role": "user", "content": "Name a color."}]
    kinds = ["chat_template"] if template else ["alpaca", "chatml"]
    for kind in kinds:
        if kind == "chatml":
            from trainer.formats import add_special_tokens, missing_special_tokens

            add_special_tokens(tok, missing_special_tokens("chatml", tok))
        fmt = build_format(kind, tok)
        eot = tok.convert_tokens_to_ids(fmt.end_of_turn)
        for prompt in ([*single], multi if kind != "alpaca" else [*single]):
            row = PairRow(prompt, "Blue is a color.", "I like turtles and green.")
            pair = encode_pair(fmt, tok, row, 512)
            assert not isinstance(pair, str), pair
            prompt_ids = encode_prompt(fmt, tok, prompt)
            n = len(prompt_ids)
            for enc, reply in ((pair.chosen, row.chosen), (pair.rejected, row.rejected)):
                # the prompt, earlier assistant turns included, identical on both sides and never trained
                assert enc.input_ids[:n] == prompt_ids
                assert enc.labels[:n] == [IGNORE_INDEX] * n
                trained = [
                    t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE_INDEX
                ]
                # exactly the reply's tokens and one end-of-turn token (pad == eos does not mask it)
                assert trained == [*tok(reply, add_special_tokens=False)["input_ids"], eot]
                assert enc.labels == [IGNORE_INDEX] * n + enc.input_ids[n : n + len(trained)] + [
                    IGNORE_INDEX
                ] * (len(enc.input_ids) - n - len(trained))
                assert enc.input_ids.count(tok.bos_token_id) == 1 and enc.input_ids[0] == tok.bos_token_id


@pytest.mark.parametrize("objective", ["orpo", "kto"])
def test_orpo_and_kto_train_save_and_reload_with_identical_outputs(pref_config, objective):
    config = pref_config(
        objective=objective, max_steps=3, val_fraction=0.2, sample_prompts=1, sample_max_new_tokens=4
    )
    summary = main(config)
    out = Path(config.output_dir)
    assert summary.state == "succeeded", summary
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # a held-out prompt with its preferred reply as the reference (kto: a desirable completion)
    (sample,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sample["prompt"][-1]["role"] == "user" and sample["reference"]
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "rewards/chosen" in rows[-1] and "eval_loss" in rows[-1]

    # the final eval loss came from the in-memory model; the reloaded adapter must give the same numbers
    model, tokenizer, fmt = load_for_inference(out)
    data = prepare_preference_data(config, tokenizer, fmt)
    cpu = torch.device("cpu")
    pad = tokenizer.pad_token_id

    def refs_of(m: Any) -> References:
        return compute_references(config, data, m, pad_id=pad, device=cpu, context=m.disable_adapter)

    reloaded = evaluate_preferences(config, model, data, refs_of(model), split="val", pad_id=pad, device=cpu)
    assert reloaded.row()["loss"] == pytest.approx(summary.eval_loss, rel=1e-5)
    with model.disable_adapter():
        base_loss = evaluate_preferences(
            config, model, data, refs_of(model), split="val", pad_id=pad, device=cpu
        )
    assert base_loss.row()["loss"] != pytest.approx(summary.eval_loss, rel=1e-4), "adapter had no effect"


def test_pairs_in_plain_messages_and_implicit_prompt_form_are_read_and_bad_rows_counted(tmp_path):
    rows = [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {  # Anthropic HH as messages: the shared turns are the prompt
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
        },
        {"prompt": "Hi", "completion": "Hello!", "label": True},
        {"prompt": "Hi", "chosen": "same", "rejected": "same"},
        {"prompt": "Hi", "chosen": "", "rejected": "x"},
        {"prompt": "Hi", "completion": "Hello!", "label": "yes"},
        ["not", "an", "object"],
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n", encoding="utf-8")
    data = load_preference_data(path)
    want = PairRow([{"role": "user", "content": "Hi"}], "Hello!", "Go away.")
    assert data.pairs == [want, want, want]
    assert len(data.unpaired) == 1 and data.unpaired[0].desirable is True
    assert dict(data.dropped) == {"identical_pair": 1, "empty_response": 1, "invalid_record": 3}


def test_config_refuses_preference_objectives_without_a_switchable_adapter():
    common = {"base_model": "m", "dataset_path": "d", "output_dir": "o"}
    for method in ("prefix", "prompt", "bitfit", "adalora"):
        with pytest.raises(ValueError, match=f"objective=dpo trains with .* not method={method}"):
            TrainConfig(**common, objective="dpo", method=method)
    with pytest.raises(ValueError, match="objective=kto runs on one GPU for now"):
        TrainConfig(**common, objective="kto", gpus=2)
    assert TrainConfig(**common, objective="kto", method="dora").objective == "kto"


def test_kto_needs_both_labels_and_dpo_needs_pairs(pref_config, tmp_path, base_model):
    tokenizer = load_tokenizer(base_model, local_only=True)
    only_good = tmp_path / "good.jsonl"
    only_good.write_text(json.dumps({"prompt": "Hi", "completion": "Hello!", "label": True}) + "\n")
    with pytest.raises(ValueError, match="needs both desirable"):
        prepare_preference_data(pref_config(objective="kto", dataset_path=str(only_good)), tokenizer)
    with pytest.raises(ValueError, match="objective=dpo needs prompt/chosen/rejected pairs"):
        prepare_preference_data(pref_config(objective="dpo", dataset_path=str(only_good)), tokenizer)


# --------------------------------------------------------------------------------------------------
# parity with TRL: the same model, the same tokens, TRL's own loss code


def _trl_model_like(policy: Any, base_model: Path) -> tuple[Any, Any]:
    """(a fresh base, a callback that gives TRL's own LoRA wrapping of it our adapter's weights). Given a
    PeftModel, TRL would take that adapter as the reference (an SFT start); given the base and a peft_config,
    its reference is the base with the adapter disabled, as ours."""
    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32)
    ours = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}

    def copy_adapter(model: Any) -> None:
        params = dict(model.named_parameters())
        assert set(ours) <= set(params), sorted(set(ours) - set(params))[:3]
        with torch.no_grad():
            for name, value in ours.items():
                params[name].copy_(value)

    return base, copy_adapter


def _pair_batch(config: TrainConfig, base_model: Path, k: int) -> tuple[Any, Any, list[Any]]:
    tokenizer = load_tokenizer(base_model, local_only=True)
    data = prepare_preference_data(config, tokenizer)
    return tokenizer, data, data.train_pairs[:k]


def test_dpo_loss_equals_trls_dpo_trainer_on_the_same_batch(pref_config, base_model, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = pref_config(beta=0.3)
    tokenizer, _data, pairs = _pair_batch(config, base_model, 4)
    policy = _lora_policy(base_model, config)
    trl_base, copy_adapter = _trl_model_like(policy, base_model)
    cpu, pad, k = torch.device("cpu"), tokenizer.pad_token_id, len(pairs)
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    refs = reference_logps(policy, seqs, batch_size=8, pad_id=pad, device=cpu, context=policy.disable_adapter)
    policy.train()
    total, stats = pair_batch_loss(
        config, policy, pairs, list(range(k)), refs[:k], refs[k:], pad_id=pad, device=cpu, full_logits=False
    )
    ours = total / k

    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2
    trainer = DPOTrainer(
        model=trl_base,
        args=DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.3, report_to="none", use_cpu=True),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=policy.peft_config["default"],
    )
    copy_adapter(trainer.model)
    batch = collate(seqs, [[i] for i in range(2 * k)], pad_id=pad, packed=False)
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "completion_mask": (batch.labels != IGNORE_INDEX).long(),
    }
    trainer.model.train()
    theirs = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert float(ours) != pytest.approx(0.6931, abs=1e-3), "policy == reference: the comparison is trivial"
    logged = trainer._metrics["train"]
    assert stats.row()["rewards/margins"] == pytest.approx(logged["rewards/margins"][-1], rel=1e-4)
    assert stats.row()["rewards/accuracies"] == pytest.approx(logged["rewards/accuracies"][-1])


def test_kto_loss_equals_trls_kto_trainer_on_the_same_batch(pref_config, base_model, tmp_path):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    config = pref_config(objective="kto", beta=0.2, kto_desirable_weight=1.3, kto_undesirable_weight=0.7)
    tokenizer = load_tokenizer(base_model, local_only=True)
    data = prepare_preference_data(config, tokenizer)
    examples = data.train_kto[:6]
    assert {e.desirable for e in examples} == {True, False}
    policy = _lora_policy(base_model, config)
    trl_base, copy_adapter = _trl_model_like(policy, base_model)
    cpu, pad, n = torch.device("cpu"), tokenizer.pad_token_id, len(examples)
    ctx = policy.disable_adapter
    ref = reference_logps(
        policy, [e.encoded for e in examples], batch_size=8, pad_id=pad, device=cpu, context=ctx
    )
    ref_kl = reference_logps(
        policy, [e.kl for e in examples], batch_size=8, pad_id=pad, device=cpu, context=ctx
    )
    policy.train()
    total, _stats = kto_batch_loss(
        config, policy, examples, list(range(n)), ref, ref_kl, pad_id=pad, device=cpu, full_logits=False
    )
    ours = total / n

    rows = [{"prompt": "p", "completion": "c", "label": b} for b in (True, False)]
    trainer = KTOTrainer(
        model=trl_base,
        peft_config=policy.peft_config["default"],
        args=KTOConfig(
            output_dir=str(tmp_path / "trl"),
            beta=0.2,
            desirable_weight=1.3,
            undesirable_weight=0.7,
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=2,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    copy_adapter(trainer.model)

    def tensors(seqs: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = collate(seqs, [[i] for i in range(len(seqs))], pad_id=pad, packed=False)
        assert b.attention_mask is not None
        return b.input_ids, b.attention_mask, (b.labels != IGNORE_INDEX).long()

    ids, att, comp = tensors([e.encoded for e in examples])
    kl_ids, kl_att, kl_comp = tensors([e.kl for e in examples])
    inputs = {
        "input_ids": ids,
        "attention_mask": att,
        "completion_mask": comp,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_att,
        "KL_completion_mask": kl_comp,
        "label": torch.tensor([e.desirable for e in examples]),
    }
    trainer.model.train()
    theirs = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["train"]["kl"][-1] >= 0


@pytest.mark.parametrize("objective", ["orpo", "simpo"])
def test_orpo_and_simpo_losses_equal_trls_on_the_same_logits(pref_config, base_model, objective):
    """TRL's ORPO and CPO(SimPO) trainers score a batch in static/instance methods: get_batch_logps on the
    logits, then odds_ratio_loss / cpo_loss; called here on the logits of the very batch we score."""
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    config = pref_config(objective=objective, beta=2.0 if objective == "simpo" else 0.1, orpo_lambda=0.25)
    tokenizer, _data, pairs = _pair_batch(config, base_model, 4)
    policy = _lora_policy(base_model, config).eval()
    cpu, pad, k = torch.device("cpu"), tokenizer.pad_token_id, len(pairs)
    with torch.no_grad():
        total, _ = pair_batch_loss(
            config,
            policy,
            pairs,
            list(range(k)),
            torch.zeros(0),
            torch.zeros(0),
            pad_id=pad,
            device=cpu,
            full_logits=False,
        )
        ours = total / k
        seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        batch = collate(seqs, [[i] for i in range(2 * k)], pad_id=pad, packed=False)
        logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    device = SimpleNamespace(device=cpu)
    if objective == "orpo":
        avg = ORPOTrainer.get_batch_logps(logits, batch.labels, average_log_prob=True)
        summed = ORPOTrainer.get_batch_logps(logits[:k], batch.labels[:k], average_log_prob=False)
        n_tokens = (batch.labels[:k, 1:] != IGNORE_INDEX).sum()
        nll = -summed.sum() / n_tokens  # ORPOTrainer's cross-entropy: a token mean over the chosen replies
        ns = SimpleNamespace(beta=0.25, accelerator=device)
        losses, *_ = ORPOTrainer.odds_ratio_loss(ns, avg[:k], avg[k:])
        theirs = nll - losses.mean()
    else:
        avg = CPOTrainer.get_batch_logps(logits, batch.labels, average_log_prob=True)
        ns = SimpleNamespace(
            beta=2.0, simpo_gamma=0.5, label_smoothing=0.0, loss_type="simpo", alpha=0.0, accelerator=device
        )
        losses, *_ = CPOTrainer.cpo_loss(ns, avg[:k], avg[k:])
        theirs = losses.mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_run_from_an_sft_adapter_takes_that_sft_model_as_its_reference_and_keeps_its_prompt_format(
    pref_config, make_config, few_pairs_file, tmp_path
):
    from trainer.preference import _build_policy, _reference_context

    sft = make_config(output_dir=str(tmp_path / "sft"), max_steps=2, lr=2e-2, val_fraction=0.0)
    assert main(sft).state == "succeeded"
    sft_model, tokenizer, fmt = load_for_inference(Path(sft.output_dir))

    config = pref_config(
        init_adapter=str(Path(sft.output_dir) / "adapter"), max_steps=1, dataset_path=str(few_pairs_file)
    )
    data = prepare_preference_data(config, tokenizer, fmt)
    data.train_pairs = data.train_pairs[:6]
    policy = _build_policy(config, config.base_model, tokenizer, [], total=2)
    cpu, pad = torch.device("cpu"), tokenizer.pad_token_id
    refs = compute_references(
        config, data, policy.model, pad_id=pad, device=cpu, context=lambda: _reference_context(policy)
    )
    want = compute_references(config, data, sft_model, pad_id=pad, device=cpu, context=contextlib.nullcontext)
    torch.testing.assert_close(refs.chosen, want.chosen, rtol=1e-5, atol=1e-4)
    base = compute_references(
        config, data, sft_model, pad_id=pad, device=cpu, context=sft_model.disable_adapter
    )
    assert not torch.allclose(refs.chosen, base.chosen, atol=1e-2), "the SFT adapter changed nothing"

    summary = main(config)
    assert summary.state == "succeeded"
    assert any("the SFT adapter" in note for note in summary.notes)
    out = Path(config.output_dir)
    assert PromptFormat.load(out / "prompt_format.json") == fmt


def test_a_cancelled_dpo_run_resumes_on_the_same_curve(pref_config, few_pairs_file, tmp_path):
    common = {
        "max_steps": 3,
        "batch_size": 2,
        "grad_accum": 2,
        "dropout": 0.1,
        "dataset_path": str(few_pairs_file),
    }
    straight = pref_config(output_dir=str(tmp_path / "straight"), **common)
    assert main(straight).state == "succeeded"
    want = _metrics(Path(straight.output_dir))

    config = pref_config(output_dir=str(tmp_path / "resumed"), **common)
    out = Path(config.output_dir)

    def cancel_after(step: int) -> None:
        if step == 2:
            (out / "CANCEL").touch()

    cancelled = main(config, on_step=cancel_after)
    assert (cancelled.state, cancelled.step) == ("cancelled", 2)
    assert not (out / "adapter").exists()
    (out / "CANCEL").unlink()
    resumed = main(config)
    assert (resumed.state, resumed.resumed_from_step) == ("succeeded", 2)
    got = _metrics(out)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "rewards/margins", "rewards/accuracies"):
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["step"], key)


def test_a_preference_run_uses_the_users_chat_template_as_sft_does(pref_config, base_model):
    # the same prompt formats as SFT: a user's Jinja chat_template reaches the pair encoding
    from tests.trainer.test_context_and_templates import USER_TEMPLATE

    config = pref_config(chat_template=USER_TEMPLATE)
    tokenizer = load_tokenizer(base_model, local_only=True)
    prepared = prepare_preference_data(config, tokenizer)
    assert prepared.fmt.kind == "chat_template" and prepared.fmt.chat_template == USER_TEMPLATE
    pair = prepared.train_pairs[0]
    text = tokenizer.decode(pair.chosen.input_ids)
    trained = tokenizer.decode(
        [t for t, lab in zip(pair.chosen.input_ids, pair.chosen.labels, strict=True) if lab != -100]
    )
    assert "### user\n" in text and "### assistant\n" in text
    assert "###" not in trained and trained.endswith("</s>")
