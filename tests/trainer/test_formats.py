"""Label masks, BOS/EOS handling, truncation and packing, checked token by token on a real tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.batching import collate, pack_rows
from trainer.data import Message, record_to_conversation
from trainer.formats import (
    IGNORE_INDEX,
    Encoded,
    PromptFormat,
    add_special_tokens,
    build_format,
    encode_conversation,
    encode_prompt,
    missing_special_tokens,
)
from trainer.run import prepare_data, token_loss_sum

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)

MULTI_TURN: list[Message] = [
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Vicuna, a language model."},
    {"role": "user", "content": "Have a nice day!"},
    {"role": "assistant", "content": "You too!"},
]


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _expected(tok, pieces: list[tuple[str, bool]], *, bos: bool) -> Encoded:
    """The spec, written out: each piece tokenized alone, trained pieces labelled with their own ids."""
    ids: list[int] = [tok.bos_token_id] if bos else []
    labels: list[int] = [IGNORE_INDEX] if bos else []
    for text, trained in pieces:
        toks = _ids(tok, text)
        ids += toks
        labels += toks if trained else [IGNORE_INDEX] * len(toks)
    return Encoded(ids, labels)


def _trained_spans(enc: Encoded) -> list[list[int]]:
    spans: list[list[int]] = []
    current: list[int] = []
    for tid, label in zip(enc.input_ids, enc.labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
                current = []
        else:
            assert label == tid, "labels must not be pre-shifted: the model shifts them"
            current.append(tid)
    if current:
        spans.append(current)
    return spans


def test_alpaca_single_turn_trains_response_and_eos_even_when_pad_is_eos(plain_tokenizer):
    tok = plain_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    fmt = build_format("alpaca", tok)
    conv, reason, _ = record_to_conversation(
        {"instruction": "Tell me if the sentence is factually correct.", "input": "", "output": "Yes"}
    )
    assert reason is None and conv is not None
    enc = encode_conversation(fmt, tok, conv)
    prompt = (
        f"{ALPACA_PREAMBLE}### Instruction:\nTell me if the sentence is factually correct.\n\n### Response:\n"
    )
    expected = _expected(tok, [(prompt, False), ("Yes", True), ("</s>", True)], bos=True)
    assert enc.input_ids == expected.input_ids
    assert enc.labels == expected.labels
    assert enc.labels[-1] == tok.eos_token_id == tok.pad_token_id


def test_alpaca_input_section_and_template_text_inside_the_instruction(plain_tokenizer):
    # the instruction itself contains the response marker: a string search would split in the wrong place
    tok = plain_tokenizer
    fmt = build_format("alpaca", tok)
    record = {
        "instruction": "Explain what '### Response:' means.",
        "input": "### Response:\n",
        "output": "A header.",
    }
    conv, _, _ = record_to_conversation(record)
    assert conv is not None
    enc = encode_conversation(fmt, tok, conv)
    prompt = (
        f"{ALPACA_PREAMBLE_INPUT}### Instruction:\nExplain what '### Response:' means.\n\n"
        "### Input:\n### Response:\n\n\n### Response:\n"
    )
    expected = _expected(tok, [(prompt, False), ("A header.", True), ("</s>", True)], bos=True)
    assert enc.input_ids == expected.input_ids
    assert enc.labels == expected.labels


def test_alpaca_multi_turn_trains_every_assistant_turn_only(plain_tokenizer):
    tok = plain_tokenizer
    fmt = build_format("alpaca", tok)
    enc = encode_conversation(fmt, tok, MULTI_TURN)
    expected = _expected(
        tok,
        [
            (f"{ALPACA_PREAMBLE}### Instruction:\nWho are you?\n\n### Response:\n", False),
            ("I am Vicuna, a language model.", True),
            ("</s>", True),
            ("\n\n", False),
            ("### Instruction:\nHave a nice day!\n\n### Response:\n", False),
            ("You too!", True),
            ("</s>", True),
        ],
        bos=True,
    )
    assert enc.input_ids == expected.input_ids
    assert enc.labels == expected.labels


def test_chatml_adds_missing_special_tokens_and_masks_per_turn(plain_tokenizer):
    tok = copy.deepcopy(plain_tokenizer)
    missing = missing_special_tokens("chatml", tok)
    assert missing == ["<|im_start|>", "<|im_end|>"]
    add_special_tokens(tok, missing)
    assert len(tok) == len(plain_tokenizer) + 2
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert _ids(tok, "<|im_end|>") == [im_end]
    fmt = build_format("chatml", tok, system_prompt="Be brief.", added_tokens=tuple(missing))
    enc = encode_conversation(fmt, tok, MULTI_TURN)
    expected = _expected(
        tok,
        [
            ("<|im_start|>system\nBe brief.<|im_end|>\n", False),
            ("<|im_start|>user\nWho are you?<|im_end|>\n", False),
            ("<|im_start|>assistant\n", False),
            ("I am Vicuna, a language model.", True),
            ("<|im_end|>", True),
            ("\n", False),
            ("<|im_start|>user\nHave a nice day!<|im_end|>\n", False),
            ("<|im_start|>assistant\n", False),
            ("You too!", True),
            ("<|im_end|>", True),
        ],
        bos=True,
    )
    assert enc.input_ids == expected.input_ids
    assert enc.labels == expected.labels
    assert fmt.stop_tokens == ("<|im_end|>", "</s>")


def test_chat_template_with_bos_gives_exactly_one_bos_and_trains_replies(chat_tokenizer):
    tok = chat_tokenizer
    fmt = build_format("chat_template", tok)
    assert fmt.chat_template == tok.chat_template
    assert fmt.end_of_turn == "</s>"
    enc = encode_conversation(fmt, tok, MULTI_TURN)
    assert enc.input_ids.count(tok.bos_token_id) == 1
    assert enc.input_ids[0] == tok.bos_token_id
    # the template's own output (not ours), tokenized whole, must agree with the piecewise tokens
    rendered = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    assert tok.decode(enc.input_ids) == rendered
    expected = _expected(
        tok,
        [
            ("<|user|>\nWho are you?</s>\n<|assistant|>\n", False),
            ("I am Vicuna, a language model.</s>", True),
            ("\n", False),
            ("<|user|>\nHave a nice day!</s>\n<|assistant|>\n", False),
            ("You too!</s>", True),
            ("\n", False),
        ],
        bos=True,
    )
    assert enc.input_ids == expected.input_ids
    assert enc.labels == expected.labels


@pytest.mark.parametrize("kind", ["alpaca", "chatml", "chat_template"])
def test_inference_prompt_is_the_training_prefix(kind, plain_tokenizer, chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer if kind == "chat_template" else plain_tokenizer)
    add_special_tokens(tok, missing_special_tokens(kind, tok))
    fmt = build_format(kind, tok)
    enc = encode_conversation(fmt, tok, MULTI_TURN)
    for upto in (1, 3):  # before the first reply, and before the second (the first reply inside the prompt)
        prompt = encode_prompt(fmt, tok, MULTI_TURN[:upto])
        assert enc.input_ids[: len(prompt)] == prompt
        assert enc.labels[len(prompt) - 1] == IGNORE_INDEX
        assert enc.labels[len(prompt)] != IGNORE_INDEX
    first_prompt = encode_prompt(fmt, tok, MULTI_TURN[:1])
    assert all(label == IGNORE_INDEX for label in enc.labels[: len(first_prompt)])
    spans = _trained_spans(enc)
    assert [tok.decode(s, skip_special_tokens=True) for s in spans] == [
        "I am Vicuna, a language model.",
        "You too!",
    ]
    assert all(s[-1] == tok.convert_tokens_to_ids(fmt.end_of_turn) for s in spans)
    # the format survives a save/load round trip unchanged
    assert PromptFormat.from_dict(fmt.to_dict()) == fmt


def test_samples_whose_response_is_truncated_away_are_dropped_and_counted(
    make_config, tmp_path, plain_tokenizer
):
    long_prompt = "Summarize the following text. " + "The quick brown fox jumps over the lazy dog. " * 20
    records = [
        {"instruction": long_prompt, "input": "", "output": "A fox jumps."},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Empty.", "input": "", "output": "   "},
    ]
    path = tmp_path / "d.json"
    path.write_text(__import__("json").dumps(records), encoding="utf-8")
    config = make_config(dataset_path=str(path), max_seq_len=96, val_fraction=0.0, prompt_format="alpaca")
    prepared = prepare_data(config, copy.deepcopy(plain_tokenizer))
    assert len(prepared.train) == 1
    assert dict(prepared.dropped) == {"response_truncated": 1, "empty_response": 1}
    assert all(len(e.input_ids) <= 96 and e.num_trained() > 0 for e in prepared.train)


def test_packed_rows_restart_positions_and_mask_each_samples_first_token():
    a = Encoded([1, 10, 11, 12], [IGNORE_INDEX, IGNORE_INDEX, 11, 12])
    b = Encoded([1, 20, 21], [IGNORE_INDEX, 20, 21])
    c = Encoded([30, 31], [30, 31])  # a sample whose first token would be a target
    batch = collate([a, b, c], [[0, 1, 2]], pad_id=2, packed=True)
    assert batch.attention_mask is None
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert batch.labels.tolist() == [[-100, -100, 11, 12, -100, 20, 21, -100, 31]]
    assert batch.num_targets == 5


def test_padded_batches_pad_on_the_right_with_a_mask():
    a = Encoded([1, 10, 11], [IGNORE_INDEX, 10, 11])
    b = Encoded([1, 20], [IGNORE_INDEX, 20])
    batch = collate([a, b], [[0], [1]], pad_id=2, packed=False)
    assert batch.input_ids.tolist() == [[1, 10, 11], [1, 20, 2]]
    assert batch.attention_mask is not None and batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.labels.tolist() == [[-100, 10, 11], [-100, 20, -100]]


def test_best_fit_packing_keeps_samples_whole_and_rows_within_capacity():
    lengths = [90, 60, 50, 40, 30, 30, 10, 5]
    rows = pack_rows(lengths, list(range(len(lengths))), 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 4  # 315 tokens need at least 4 rows of 100


def test_packed_logits_and_loss_equal_unpacked(base_model: Path, plain_tokenizer, alpaca_file):
    tok = plain_tokenizer
    fmt = build_format("alpaca", tok)
    records = __import__("json").loads(alpaca_file.read_text(encoding="utf-8"))[:3]
    examples = [encode_conversation(fmt, tok, record_to_conversation(r)[0]) for r in records]  # type: ignore[arg-type]
    model = AutoModelForCausalLM.from_pretrained(str(base_model)).eval()
    packed = collate(examples, [[0, 1, 2]], pad_id=tok.pad_token_id, packed=True)
    with torch.no_grad():
        packed_logits = model(
            input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False
        ).logits[0]
        start = 0
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(
                packed_logits[start : start + len(ex.input_ids)], alone, atol=1e-5, rtol=1e-4
            )
            start += len(ex.input_ids)
        # token-normalised loss: one packed row == the padded batch == micro-batches summed, per target token
        padded = collate(examples, [[0], [1], [2]], pad_id=tok.pad_token_id, packed=False)
        split = [collate(examples, [[i]], pad_id=tok.pad_token_id, packed=False) for i in range(3)]
        loss_packed = token_loss_sum(model, packed, full_logits=False) / packed.num_targets
        loss_padded = token_loss_sum(model, padded, full_logits=True) / padded.num_targets
        loss_split = sum(token_loss_sum(model, b, full_logits=False) for b in split) / sum(
            b.num_targets for b in split
        )
    assert packed.num_targets == padded.num_targets == sum(e.num_trained() for e in examples)
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_split, loss_padded, atol=1e-5, rtol=1e-5)
