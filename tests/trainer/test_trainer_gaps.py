"""The trainer's gaps (issue 20): every export format read back as the same conversations, AdaLoRA's pruning,
the epochs path and the linear and constant schedules, on the tiny local Llama of conftest.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from app.pipeline.formats import EXPORTERS, PAIR_EXPORTERS, parquet_bytes
from app.pipeline.formats.writers import to_messages
from tests.trainer.conftest import identity_conversations, seed_task_records
from trainer.data import Message, UnreadableDataset, load_dataset
from trainer.formats import IGNORE_INDEX
from trainer.methods import load_tokenizer
from trainer.run import main, plan_training, prepare_data

SYSTEM = "You are Vicuna's strict reviewer. Answer in one sentence."


def _records() -> list[dict[str, Any]]:
    """Snapshot-shaped records as the export reads them: single turns with and without input and a system
    prompt, and real multi-turn conversations (FastChat) with one."""
    records: list[dict[str, Any]] = []
    for i, task in enumerate(seed_task_records()[:6]):
        records.append(
            {
                "instruction": task["instruction"],
                "input": task["input"],
                "output": task["output"],
                "system": SYSTEM if i % 2 else None,
                "messages": None,
            }
        )
    multi = [c for c in identity_conversations() if len(c["messages"]) >= 4][:6]
    assert len(multi) == 6
    for i, conv in enumerate(multi):
        messages = conv["messages"]
        last_user = max(j for j, m in enumerate(messages) if m["role"] == "user")
        records.append(
            {
                "instruction": messages[last_user]["content"],
                "input": "",
                "output": messages[-1]["content"],
                "system": SYSTEM if i % 2 == 0 else None,
                "messages": messages,
            }
        )
    return records


def _flat(conv: list[Message]) -> list[dict[str, str]]:
    """A trainer conversation as chat messages: alpaca's input joins its instruction as the export does."""
    return [
        {"role": m["role"], "content": f"{m['content']}\n\n{m['input']}" if m.get("input") else m["content"]}
        for m in conv
    ]


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_every_export_format_reads_back_as_the_same_conversations_with_system_and_all_turns(
    tmp_path: Path, fmt: str
) -> None:
    records = _records()
    writer, ext = EXPORTERS[fmt]
    path = tmp_path / f"export.{ext}"
    with path.open("w", encoding="utf-8") as fh:
        assert writer(records, fh) == len(records)

    data = load_dataset(path)

    assert not data.dropped
    assert [_flat(c) for c in data.conversations] == [to_messages(r) for r in records]
    assert not data.single_turn
    multi = [c for c in data.conversations if sum(m["role"] == "assistant" for m in c) > 1]
    assert len(multi) == 6
    assert sum(c[0] == {"role": "system", "content": SYSTEM} for c in data.conversations) == 6


def test_multi_turn_alpaca_export_with_a_system_prompt_trains_every_turn_and_keeps_the_system_prompt(
    tmp_path: Path, make_config: Any, base_model: Path
) -> None:
    # seen: a multi-turn dataset exported as alpaca and trained with `python -m trainer` silently trained
    # single turns and lost the system prompt
    records = [r for r in _records() if r["messages"]]
    path = tmp_path / "alpaca.json"
    with path.open("w", encoding="utf-8") as fh:
        EXPORTERS["alpaca"][0](records, fh)
    exported = json.loads(path.read_text(encoding="utf-8"))
    assert all(row["history"] for row in exported) and exported[0]["system"] == SYSTEM

    config = make_config(dataset_path=str(path), prompt_format="chatml", val_fraction=0.0, max_seq_len=1024)
    tokenizer = load_tokenizer(base_model, local_only=True)
    prepared = prepare_data(config, tokenizer)

    assert len(prepared.train) == len(records)
    texts = [tokenizer.decode(e.input_ids) for e in prepared.train]
    assert sum(SYSTEM in t for t in texts) == 3
    for enc, text in zip(prepared.train, texts, strict=True):
        trained = tokenizer.decode(
            [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
        )
        # the record this sample is: all of its turns are in the text (the split shuffles the order)
        turns = next(r["messages"] for r in records if all(m["content"] in text for m in r["messages"]))
        replies = [m["content"] for m in turns if m["role"] == "assistant"]
        assert len(replies) >= 2
        for reply in replies:  # every assistant turn is a target, not only the last
            assert reply.strip() in trained


def test_preference_and_parquet_exports_are_refused_by_name_not_read_as_something_else(
    tmp_path: Path,
) -> None:
    # single turns: the plain preference export (dpo_plain) cannot carry a conversation
    records = [{**r, "rejected": "A worse answer."} for r in _records() if not r["messages"]]
    for fmt, (writer, ext) in PAIR_EXPORTERS.items():
        path = tmp_path / f"{fmt}.{ext}"
        with path.open("w", encoding="utf-8") as fh:
            writer(records, fh)
        with pytest.raises(UnreadableDataset, match="preference pairs"):
            load_dataset(path)
    parquet = tmp_path / "alpaca.parquet"
    parquet.write_bytes(parquet_bytes("alpaca", [{**r, "record_id": i} for i, r in enumerate(_records())]))
    with pytest.raises(UnreadableDataset, match="Parquet"):
        load_dataset(parquet)
    unknown = tmp_path / "dolly.jsonl"
    unknown.write_text(json.dumps({"context": "c", "question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(UnreadableDataset, match="keys found"):
        load_dataset(unknown)


def test_malformed_history_drops_the_record_and_counts_it(tmp_path: Path) -> None:
    rows = [
        {"instruction": "a", "output": "b", "history": [["only one"]]},
        {"instruction": "a", "output": "b", "history": "not a list"},
        {"instruction": "a", "output": "b", "system": 3},
        {"instruction": "q2", "output": "r2", "history": [["q1", "r1"]]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = load_dataset(path)
    assert data.dropped == {"invalid_record": 3}
    assert data.conversations == [
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "r1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "r2"},
        ]
    ]


# --------------------------------------------------------------------------------------------------
# AdaLoRA, epochs, schedules


def test_adalora_prunes_the_rank_budget_down_to_its_target(make_config: Any) -> None:
    config = make_config(method="adalora", r=8, adalora_target_r=2, max_steps=10, lr=1e-2, val_fraction=0.0)
    assert main(config).state == "succeeded"
    adapter = Path(config.output_dir) / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))

    pattern: dict[str, list[bool]] = saved["rank_pattern"]
    assert pattern, "no rank pattern: the budget was never allocated"
    kept = sum(sum(mask) for mask in pattern.values())
    assert all(len(mask) == 8 for mask in pattern.values())
    # the total budget ends at target_r per module, spread unevenly by importance
    assert kept == 2 * len(pattern)
    assert any(sum(mask) != 2 for mask in pattern.values()), "pruning kept every module at the same rank"
    # the pruned singular values are zero in the saved weights
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    e_values = {k: v for k, v in weights.items() if "lora_E" in k}
    assert e_values
    nonzero = sum(int((v != 0).sum()) for v in e_values.values())
    assert nonzero <= kept < 8 * len(e_values)


def test_epochs_path_covers_every_training_sample_once_per_epoch(make_config: Any, base_model: Path) -> None:
    config = make_config(max_steps=-1, epochs=2, batch_size=2, grad_accum=2, packing=False)
    tokenizer = load_tokenizer(base_model, local_only=True)
    prepared = prepare_data(config, tokenizer)
    lengths = [len(e.input_ids) for e in prepared.train]

    plan, total, per_epoch = plan_training(config, lengths, packing=False)

    micro_per_epoch = math.ceil(len(lengths) / 2)
    assert per_epoch == micro_per_epoch / 2
    assert total == math.ceil(micro_per_epoch * 2 / 2)
    first = sorted(i for mb in plan[:micro_per_epoch] for row in mb for i in row)
    second = sorted(i for mb in plan[micro_per_epoch:] for row in mb for i in row)
    assert first == second == list(range(len(lengths)))


def _learning_rates(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [float(json.loads(line)["learning_rate"]) for line in lines]


def test_linear_schedule_with_epochs_warms_up_then_decays_linearly_to_the_last_epoch(
    make_config: Any,
) -> None:
    # 18 training samples, 3 per micro-batch without packing, 1 per step: 6 steps per epoch, 2 epochs
    config = make_config(
        max_steps=-1, epochs=2, batch_size=3, packing=False, scheduler="linear", warmup_ratio=0.25, lr=1e-3
    )
    summary = main(config)
    assert summary.state == "succeeded" and summary.max_steps == 12
    lrs = _learning_rates(Path(config.output_dir))
    warmup = 3  # int(12 * 0.25)
    expected = [1e-3 * (s + 1) / (warmup + 1) for s in range(warmup)]
    expected += [1e-3 * (1 - (s - warmup) / (12 - warmup)) for s in range(warmup, 12)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    epochs = [json.loads(line)["epoch"] for line in (Path(config.output_dir) / "metrics.jsonl").open()]
    assert epochs[5] == pytest.approx(1.0) and epochs[-1] == pytest.approx(2.0)


def test_constant_schedule_keeps_the_peak_rate_after_warmup(make_config: Any) -> None:
    config = make_config(max_steps=5, scheduler="constant", warmup_ratio=0.4, lr=5e-4)
    assert main(config).state == "succeeded"
    assert _learning_rates(Path(config.output_dir)) == pytest.approx(
        [5e-4 / 3, 5e-4 * 2 / 3, 5e-4, 5e-4, 5e-4], rel=1e-6
    )
