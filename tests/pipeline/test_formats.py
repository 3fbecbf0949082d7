"""Dataset formats: readers, their error messages, writers, round trips on real data, split."""

from __future__ import annotations

import io
import json
import re
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.pipeline.formats import (
    EXPORTERS,
    BadLine,
    FormatError,
    Limits,
    ParsedRecord,
    detect_format,
    iter_records,
    parse_all,
    split,
    to_messages,
    write_alpaca,
    write_openai_jsonl,
    write_sharegpt,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"reference data {rel} not available")
    return path


@cache
def sources_counts() -> dict[str, int]:
    """Record counts from SOURCES.md tables: the leading number of each row's "Records" cell."""
    counts: dict[str, int] = {}
    header: list[str] | None = None
    for line in data_file("SOURCES.md").read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if "Records" not in header or not cells[0].startswith("`"):
            continue
        match = re.match(r"(\d[\d,]*)", cells[header.index("Records")])
        if match:
            counts[cells[0].strip("`")] = int(match.group(1).replace(",", ""))
    return counts


def core(rec: ParsedRecord) -> tuple[Any, ...]:
    return (rec.instruction, rec.input, rec.output, rec.messages, rec.system)


def as_dict(rec: ParsedRecord) -> dict[str, Any]:
    return {
        "instruction": rec.instruction,
        "input": rec.input,
        "output": rec.output,
        "messages": rec.messages,
        "system": rec.system,
    }


def export(records: list[ParsedRecord], exporter: str) -> bytes:
    writer, _ = EXPORTERS[exporter]
    buf = io.StringIO()
    assert writer(map(as_dict, records), buf) == len(records)
    return buf.getvalue().encode()


def jsonl(*objs: Any) -> bytes:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode()


def first_error(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(FormatError) as info:
        parse_all(data, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------- real data

REAL_FILES = {
    "gpteacher/codegen-instruct.json": "alpaca",
    "gpteacher/roleplay-simple-deduped-roleplay-instruct.json": "alpaca",
    "gpteacher/toolformer-dedupe-only-dataset.json": "alpaca",
    "gpteacher/toolformer-similarity-0.6-dataset.json": "alpaca",
    "alpacadatacleaned/gsm_8k_train.json": "alpaca",
    "codealpaca/code_alpaca_2k.json": "alpaca",
    "alpaca_eval/text_davinci_003.model_outputs.json": "alpaca",
    "alpaca-chinese-dataset/zh-data-part-00.json": "alpaca",
    "alpaca-chinese-dataset/zh-data-part-01.json": "alpaca",
    "belle/dev1K.json": "alpaca",
    "fastchat/dummy_conversation.json": "sharegpt",
    "medicalgpt/sharegpt_zh_1K_format.jsonl": "sharegpt",
    "medicalgpt/medical_sft_1K_format.jsonl": "sharegpt",
    "self-instruct/seed_tasks.jsonl": "self_instruct",
    "self-instruct/user_oriented_instructions.jsonl": "self_instruct",
    "belle/zh_seed_tasks.json": "self_instruct",
    "fastchat/mt_bench_question.jsonl": "mt_bench",
    "belle/eval_set.json": "belle_eval",
    "instructionwild/seed_prompts_en.jsonl": "prompts",
    "instructionwild/seed_prompts_ch.jsonl": "prompts",
    "instructionwild/user_1.jsonl": "prompts",
}


@pytest.mark.parametrize("rel", sorted(REAL_FILES))
def test_real_file_is_detected_and_every_record_counted_in_sources_md_parses(rel: str) -> None:
    data = data_file(rel).read_bytes()
    assert detect_format(data[:4096], rel) == REAL_FILES[rel]
    good, bad = parse_all(io.BytesIO(data), filename=rel, skip_bad=True)
    assert bad == []
    assert len(good) == sources_counts()[rel]


@pytest.mark.parametrize(
    "rel",
    ["wizardlm/WizardLM_testset.jsonl", "pclue/pCLUE_train_9.json", "h2o-wizardlm/wizardlm.508e.json"],
)
def test_files_of_no_supported_format_are_refused_as_unknown(rel: str) -> None:
    message = first_error(data_file(rel).read_bytes(), filename=rel)
    assert "unknown format: the first record has keys" in message


@pytest.mark.parametrize(
    ("rel", "malformed"),
    [("instructionwild/user_2.jsonl", [134, 168]), ("instructionwild/user_3.jsonl", [10, 121, 122])],
)
def test_real_malformed_lines_are_reported_with_their_line_numbers(rel: str, malformed: list[int]) -> None:
    # These prompt files have no outputs, so every well-formed line is refused for that instead.
    good, bad = parse_all(data_file(rel).read_bytes(), fmt="alpaca", skip_bad=True)
    assert good == []
    assert [b.line for b in bad if b.message.startswith("malformed JSON")] == malformed
    missing = [b for b in bad if b.field == "output"]
    assert {b.message for b in missing} == {"required field is missing"}
    assert len(missing) == sources_counts()[rel]


def test_prompt_only_files_import_with_empty_answers_and_their_type_as_label() -> None:
    # seen: InstructionWild's prompt files could not be imported at all (alpaca requires an output)
    good, bad = parse_all(data_file("instructionwild/user_2.jsonl").read_bytes(), skip_bad=True)
    assert [b.line for b in bad] == [134, 168]
    assert len(good) == sources_counts()["instructionwild/user_2.jsonl"]
    assert all(rec.output == "" and rec.instruction.strip() for rec in good)
    typed, _ = parse_all(data_file("instructionwild/user_1.jsonl").read_bytes())
    assert typed[0].label == "Generation"


def test_a_prompt_file_refuses_a_record_with_an_answer_instead_of_dropping_it() -> None:
    data = jsonl({"instruction": "a"}, {"instruction": "b", "output": "c"})
    assert first_error(data) == (
        'line 2: field "output": this file imports as prompts without answers; import a file with answers as alpaca'
    )


def test_an_alpaca_file_missing_its_outputs_is_still_refused_not_read_as_prompts() -> None:
    assert (
        first_error(jsonl({"instruction": "a", "input": "b"}))
        == 'line 1: field "output": required field is missing'
    )


ROUND_TRIPS = [
    ("fastchat/dummy_conversation.json", "sharegpt"),
    ("fastchat/dummy_conversation.json", "openai"),
    ("fastchat/dummy_conversation.json", "alpaca"),
    ("medicalgpt/sharegpt_zh_1K_format.jsonl", "sharegpt"),
    ("medicalgpt/sharegpt_zh_1K_format.jsonl", "openai"),
    ("medicalgpt/medical_sft_1K_format.jsonl", "sharegpt"),
    ("medicalgpt/medical_sft_1K_format.jsonl", "alpaca_jsonl"),
    ("self-instruct/seed_tasks.jsonl", "alpaca"),
    ("codealpaca/code_alpaca_2k.json", "alpaca"),
    ("codealpaca/code_alpaca_2k.json", "alpaca_jsonl"),
    ("gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "alpaca"),
]


@pytest.mark.parametrize(("rel", "exporter"), ROUND_TRIPS)
def test_export_then_reimport_gives_identical_records(rel: str, exporter: str) -> None:
    original, _ = parse_all(data_file(rel).read_bytes())
    again, bad = parse_all(export(original, exporter), filename=f"export.{EXPORTERS[exporter][1]}")
    assert bad == []
    assert [core(r) for r in again] == [core(r) for r in original]


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_every_exporter_keeps_the_chat_of_every_record(exporter: str) -> None:
    records = [
        *parse_all(data_file("self-instruct/seed_tasks.jsonl").read_bytes())[0],
        *parse_all(data_file("fastchat/dummy_conversation.json").read_bytes())[0],
        *parse_all(jsonl({"instruction": "Say hi.", "output": "Hi!", "system": "Be brief."}))[0],
    ]
    again, _ = parse_all(export(records, exporter))
    assert [to_messages(as_dict(r)) for r in again] == [to_messages(as_dict(r)) for r in records]


def test_self_instruct_seed_fields_land_in_their_columns() -> None:
    records, _ = parse_all(data_file("self-instruct/seed_tasks.jsonl").read_bytes())
    raw = [json.loads(line) for line in data_file("self-instruct/seed_tasks.jsonl").read_text().splitlines()]
    assert [r.is_classification for r in records] == [t["is_classification"] for t in raw]
    assert [r.output for r in records] == [t["instances"][0]["output"] for t in raw]
    assert [r.extra["id"] for r in records] == [t["id"] for t in raw]
    assert [r.line for r in records] == list(range(1, len(raw) + 1))


def test_sharegpt_multi_turn_keeps_messages_and_single_exchange_becomes_a_plain_record() -> None:
    records, _ = parse_all(data_file("fastchat/dummy_conversation.json").read_bytes())
    raw = json.loads(data_file("fastchat/dummy_conversation.json").read_text())
    for rec, item in zip(records, raw, strict=True):
        turns = item["conversations"]
        assert rec.instruction == turns[0]["value"]
        assert rec.output == turns[1]["value"]
        assert rec.extra == {"id": item["id"]}
        if len(turns) == 2:
            assert rec.messages is None
        else:
            assert rec.messages is not None
            assert [m["content"] for m in rec.messages] == [t["value"] for t in turns]


# ------------------------------------------------------------------------------------ each format


def test_alpaca_accepts_missing_input_and_gpteacher_response() -> None:
    records, _ = parse_all(
        jsonl(
            {"instruction": "A", "output": "B"},
            {"instruction": "C", "input": "D", "response": "E", "example_input": "x"},
            {"instruction": "F", "input": None, "output": "G", "response": "H"},
        )
    )
    assert [(r.instruction, r.input, r.output) for r in records] == [
        ("A", "", "B"),
        ("C", "D", "E"),
        ("F", "", "G"),
    ]
    assert [r.extra for r in records] == [{}, {"example_input": "x"}, {"response": "H"}]


def test_alpaca_history_becomes_a_conversation() -> None:
    (rec,), _ = parse_all(
        jsonl(
            {
                "instruction": "and 3?",
                "input": "",
                "output": "9",
                "history": [["square 2?", "4"]],
                "system": "S",
            }
        )
    )
    assert rec.system == "S"
    assert rec.messages == [
        {"role": "user", "content": "square 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3?"},
        {"role": "assistant", "content": "9"},
    ]
    assert (rec.instruction, rec.output) == ("square 2?", "4")


def test_sharegpt_maps_role_aliases_and_takes_leading_system_turn() -> None:
    (rec,), _ = parse_all(
        jsonl(
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "u1"},
                    {"from": "chatgpt", "value": "a1"},
                    {"from": "user", "value": "u2"},
                    {"from": "bing", "value": "a2"},
                    {"role": "user", "content": "u3"},
                    {"from": "Bard", "value": "a3"},
                ]
            }
        )
    )
    assert rec.system == "S"
    assert rec.messages is not None
    assert [m["role"] for m in rec.messages] == ["user", "assistant"] * 3


def test_openai_messages_with_system_and_text_parts() -> None:
    (multi, single), _ = parse_all(
        jsonl(
            {
                "messages": [
                    {"role": "developer", "content": "S"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}],
                    },
                    {"role": "assistant", "content": "hi", "weight": 1},
                    {"role": "user", "content": "bye"},
                ]
            },
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 7},
        )
    )
    assert multi.system == "S"
    assert multi.messages == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "bye"},
    ]
    assert (single.instruction, single.output, single.messages, single.extra) == ("q", "a", None, {"id": 7})


def test_dolly_context_becomes_input_and_category_the_label() -> None:
    (rec,), _ = parse_all(
        jsonl({"instruction": "Who?", "context": "Text.", "response": "Him.", "category": "closed_qa"}),
        filename="databricks-dolly-15k.jsonl",
    )
    assert (rec.instruction, rec.input, rec.output, rec.label) == ("Who?", "Text.", "Him.", "closed_qa")


def test_mt_bench_question_is_its_first_turn_labelled_by_category_with_the_rest_in_meta() -> None:
    rows = [
        json.loads(line) for line in data_file("fastchat/mt_bench_question.jsonl").read_text().splitlines()
    ]
    good, _ = parse_all(
        io.BytesIO(data_file("fastchat/mt_bench_question.jsonl").read_bytes()), skip_bad=False
    )
    assert [(r.instruction, r.label) for r in good] == [(q["turns"][0], q["category"]) for q in rows]
    assert [r.extra["turns"] for r in good] == [q["turns"] for q in rows]
    assert [r.extra["question_id"] for r in good] == [q["question_id"] for q in rows]
    with_reference = [(r, q) for r, q in zip(good, rows, strict=True) if q.get("reference")]
    assert len(with_reference) == 39
    assert all(
        r.output == q["reference"][0] and r.extra["reference"] == q["reference"] for r, q in with_reference
    )
    assert {r.output for r, q in zip(good, rows, strict=True) if not q.get("reference")} == {""}
    assert "turns[1]" in first_error(jsonl({"turns": ["ok", 3], "category": "math"}))


def test_belle_eval_question_standard_answer_and_class_land_in_their_columns() -> None:
    path = data_file("belle/eval_set.json")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    good, _ = parse_all(io.BytesIO(path.read_bytes()), skip_bad=False)
    assert [(r.instruction, r.output, r.label) for r in good] == [
        (q["question"], q["std_answer"], q["class"]) for q in rows
    ]
    assert 'field "question"' in first_error(jsonl({"question": 1, "class": "math"}))


def test_self_instruct_keeps_extra_instances() -> None:
    task = {
        "id": "t1",
        "instruction": "Classify.",
        "instances": [{"input": "a", "output": "x"}, {"input": "b", "output": "y"}],
        "is_classification": True,
    }
    (rec,), _ = parse_all(jsonl(task))
    assert (rec.input, rec.output, rec.is_classification) == ("a", "x", True)
    assert rec.extra == {"id": "t1", "instances": [{"input": "b", "output": "y"}]}


@pytest.mark.parametrize(
    ("keys", "filename", "expected"),
    [
        ({"conversations": [], "id": 1}, None, "sharegpt"),
        ({"messages": []}, None, "openai"),
        ({"instruction": "", "instances": []}, None, "self_instruct"),
        ({"instruction": "", "context": "", "response": "", "category": ""}, None, "dolly"),
        ({"instruction": "", "input": "", "response": ""}, None, "alpaca"),
        ({"instruction": "", "response": ""}, None, "alpaca"),
        ({"instruction": "", "response": ""}, "dolly-sample.jsonl", "dolly"),
        ({"instruction": "", "output": "", "category": ""}, None, "alpaca"),
        ({"text": ""}, "my_sharegpt.jsonl", "sharegpt"),
    ],
)
def test_format_is_detected_from_first_record_keys_and_filename(
    keys: dict[str, Any], filename: str | None, expected: str
) -> None:
    assert detect_format(jsonl(keys), filename) == expected
    assert detect_format(json.dumps([keys], indent=2).encode(), filename) == expected


def test_detection_from_a_head_cut_inside_the_first_record() -> None:
    head = json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "a" * 5000}]}]).encode()[:200]
    assert detect_format(head) == "sharegpt"


def test_bom_crlf_and_blank_lines_keep_line_numbers() -> None:
    data = b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\r\n\r\n{"instruction": "c", "output": 1}\r\n'
    good, bad = parse_all(data, skip_bad=True)
    assert [r.instruction for r in good] == ["a"]
    assert [str(b) for b in bad] == ['line 3: field "output": expected string, got number']


def test_jsonl_streams_across_read_chunks_with_correct_line_numbers(tmp_path: Path) -> None:
    line = json.dumps({"instruction": "x" * 100, "output": "y"}) + "\n"
    count = 3 * (1 << 20) // len(line)  # several read chunks
    path = tmp_path / "big.jsonl"
    path.write_text(line * count + '{"instruction": "z"}\n')
    with path.open("rb") as fp:
        good, bad = parse_all(fp, skip_bad=True)
    assert len(good) == count
    assert [str(b) for b in bad] == [f'line {count + 1}: field "output": required field is missing']


class CountingStream(io.RawIOBase):
    """A JSONL stream that counts how much the reader pulled from it."""

    def __init__(self, lines: int) -> None:
        self.data = io.BytesIO(jsonl(*({"instruction": str(i), "output": "o"} for i in range(lines))))
        self.pulled = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.data.read(size)
        self.pulled += len(chunk)
        return chunk


def test_jsonl_records_come_out_before_the_whole_file_is_read() -> None:
    stream = CountingStream(60_000)
    records = iter_records(stream)  # type: ignore[arg-type]
    first = next(records)
    assert isinstance(first, ParsedRecord) and first.instruction == "0"
    assert stream.pulled <= 1 << 20 < len(stream.data.getvalue())


# ------------------------------------------------------------------------------------- bad input


def test_malformed_json_names_the_line_and_column() -> None:
    data = b'{"instruction": "a", "output": "b"}\n{"instruction": "a" "output": "b"}\n'
    assert first_error(data) == "line 2: malformed JSON: Expecting ',' delimiter at column 21"
    data = b'{"instruction": "a", "output": "b"}\n  {"instruction": "a" "output": "b"}  \r\n'
    assert first_error(data) == "line 2: malformed JSON: Expecting ',' delimiter at column 23"


def test_wrong_type_names_line_and_field() -> None:
    data = jsonl(
        {"instruction": "a", "output": "b"},
        {"instruction": "a", "output": "b"},
        {"instruction": "a", "output": 3},
    )
    assert first_error(data) == 'line 3: field "output": expected string, got number'


@pytest.mark.parametrize(
    ("record", "fmt", "expected"),
    [
        ({"instruction": "a"}, "alpaca", 'line 1: field "output": required field is missing'),
        ({"output": "a"}, "alpaca", 'line 1: field "instruction": required field is missing'),
        ({"instruction": "a", "input": ["x"], "output": "b"}, "alpaca", 'line 1: field "input": expected string, got array'),
        ({"instruction": "a", "output": "b", "history": [["q"]]}, "alpaca", 'line 1: field "history[0]": expected a [user, assistant] pair of strings'),
        ({"instruction": "a", "context": "c"}, "dolly", 'line 1: field "response": required field is missing'),
        ({"instruction": "a", "response": "r", "category": 5}, "dolly", 'line 1: field "category": expected string, got number'),
        ({"instruction": "a", "instances": []}, "self_instruct", 'line 1: field "instances": expected at least one instance'),
        ({"instruction": "a", "instances": [{"input": "x"}]}, "self_instruct", 'line 1: field "instances[0].output": required field is missing'),
        ({"instruction": "a", "instances": [{"output": "x"}], "is_classification": "no"}, "self_instruct", 'line 1: field "is_classification": expected boolean, got string'),
        ({"conversations": "hi"}, "sharegpt", 'line 1: field "conversations": expected array, got string'),
        ({"conversations": []}, "sharegpt", 'line 1: field "conversations": expected at least one message'),
        ({"conversations": [{"from": "human", "value": None}]}, "sharegpt", 'line 1: field "conversations[0].value": expected string, got null'),
        ({"conversations": [{"from": "system", "value": "s"}]}, "sharegpt", 'line 1: field "conversations": expected at least one user or assistant message besides the system prompt'),
        ({"messages": [{"role": "tool", "content": "x"}]}, "openai", 'line 1: field "messages[0].role": unknown role "tool" (expected one of: system, developer, user, assistant)'),
        ({"messages": [{"role": "assistant", "content": None}]}, "openai", 'line 1: field "messages[0].content": expected string, got null'),
        ({"messages": [{"role": "user"}]}, "openai", 'line 1: field "messages[0].content": required field is missing'),
    ],
)  # fmt: skip
def test_bad_record_is_refused_with_line_field_and_reason(record: Any, fmt: str, expected: str) -> None:
    assert first_error(jsonl(record), fmt=fmt) == expected


def test_a_line_that_is_not_an_object_is_refused() -> None:
    data = jsonl({"instruction": "a", "output": "b"}, ["instruction", "output"])
    assert first_error(data) == "line 2: expected a JSON object, got array"


def test_unknown_sharegpt_role_is_refused_with_its_line() -> None:
    ok = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    bad = {"conversations": [{"from": "human", "value": "a"}, {"from": "wizard", "value": "b"}]}
    message = first_error(jsonl(ok, bad))
    assert message.startswith(
        'line 2: field "conversations[1].from": unknown role "wizard" (expected one of: human,'
    )


def test_ten_megabyte_field_exceeds_the_field_limit() -> None:
    data = jsonl({"instruction": "a", "output": "x" * (10 << 20)})
    assert first_error(data) == 'line 1: field "output": 10,485,760 characters exceeds the limit of 1,000,000'


def test_field_limit_applies_to_fields_kept_in_extra() -> None:
    data = jsonl({"instruction": "a", "output": "b", "meta": {"notes": ["y" * 101]}})
    assert (
        first_error(data, limits=Limits(max_field_chars=100))
        == 'line 1: field "meta.notes[0]": 101 characters exceeds the limit of 100'
    )


def test_invalid_utf8_names_the_line() -> None:
    data = b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n'
    assert first_error(data) == "line 2: invalid UTF-8: byte 0xff at column 18"


def test_invalid_utf8_in_a_json_array_names_the_item_and_line() -> None:
    data = b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "\xc3(", "output": "b"}\n]'
    good, bad = parse_all(data, skip_bad=True)
    assert len(good) == 1
    assert [str(b) for b in bad] == ["item 2: invalid UTF-8: byte 0xc3 on line 3"]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_json_bomb_in_jsonl_is_refused_by_the_depth_limit(depth: int) -> None:
    bomb = b'{"instruction": "a", "output": "b", "x": ' + b"[" * depth + b"]" * depth + b"}\n"
    start = time.perf_counter()
    assert first_error(bomb) == "line 1: nesting deeper than 64 levels"
    assert time.perf_counter() - start < 2


def test_json_bomb_in_a_json_array_is_refused_by_the_depth_limit() -> None:
    shallow = b'[{"instruction": "a", "output": "b", "x": ' + b"[" * 100 + b"]" * 100 + b"}]"
    assert first_error(shallow) == "item 1: nesting deeper than 64 levels"
    deep = b'[{"instruction": "a", "output": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]"
    assert first_error(deep) == "line 1: item 1: nesting deeper than 64 levels"


def test_depth_limit_counts_structure_not_brackets_inside_strings() -> None:
    limit = Limits(max_depth=5)
    nested_ok = {"instruction": "a", "output": "[[[[[[{{{{{", "x": [[{"y": []}]]}  # depth 5 exactly
    assert len(parse_all(jsonl(nested_ok), limits=limit)[0]) == 1
    too_deep = {"instruction": "a", "output": "b", "x": [[[[{"y": 1}]]]]}  # depth 6
    assert first_error(jsonl(too_deep), limits=limit) == "line 1: nesting deeper than 5 levels"


def test_turn_limit_refuses_overlong_conversations() -> None:
    conv = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}] * 3}
    assert (
        first_error(jsonl(conv), limits=Limits(max_turns=5))
        == 'line 1: field "conversations": 6 messages exceeds the limit of 5'
    )


def test_unknown_format_lists_the_keys_it_saw() -> None:
    message = first_error(jsonl({"prompt": "p", "completion": "c"}))
    assert message.startswith(
        'line 1: unknown format: the first record has keys "completion", "prompt"; expected alpaca'
    )


def test_a_file_whose_first_hundred_records_are_all_broken_is_refused_as_a_whole() -> None:
    data = b"{oops}\n" * 150
    assert first_error(data, skip_bad=True) == (
        "could not detect the format: the first 100 records are all invalid, the first: "
        "line 1: malformed JSON: Expecting property name enclosed in double quotes at column 2"
    )
    # Named explicitly, the same file is just a list of bad lines.
    good, bad = parse_all(data, fmt="alpaca", skip_bad=True)
    assert (len(good), len(bad)) == (0, 150)


def test_unknown_format_name_is_refused() -> None:
    assert first_error(jsonl({"instruction": "a", "output": "b"}), fmt="parquet") == (
        "unknown format 'parquet': expected one of alpaca, sharegpt, openai, dolly, self_instruct, mt_bench, "
        "belle_eval, prompts, preference, hh_rlhf, ultrafeedback or auto"
    )


@pytest.mark.parametrize("data", [b"", b"  \n\n", b"\xef\xbb\xbf", b"[]", b"[ \n ]"])
def test_empty_file_is_refused(data: bytes) -> None:
    assert first_error(data).startswith("empty file")


def test_not_json_at_all_is_refused() -> None:
    assert first_error(b"instruction,output\nhi,there\n") == (
        "line 1: not JSON: a file must be a JSON array of records or JSON Lines (one object per line)"
    )


def test_json_array_with_a_bad_item_names_the_item_index() -> None:
    data = json.dumps(
        [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}], indent=2
    ).encode()
    assert first_error(data) == 'item 2: field "output": expected string, got null'


def test_json_array_syntax_error_is_a_file_error_with_the_line() -> None:
    data = b'[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a", "output": "b",}\n]'
    assert first_error(data, skip_bad=True) == (
        "line 3: malformed JSON in item 2: Expecting property name enclosed in double quotes at column 38"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'[{"instruction": "a", "output": "b"}', "line 1: malformed JSON: the array is not closed with ']'"),
        (b'[{"instruction": "a", "output": "b"}\n {"instruction": "c"}]', "line 2: malformed JSON: expected ',' or ']' after item 1"),
        (b'[{"instruction": "a", "output": "b"}]\n[]', "line 2: malformed JSON: extra data after the closing ']'"),
        (b'[{"instruction": "a", "output": "b"},]', "line 1: malformed JSON in item 2: Expecting value at column 38"),
    ],
)  # fmt: skip
def test_broken_json_array_structure_is_a_file_error(data: bytes, expected: str) -> None:
    assert first_error(data, skip_bad=True) == expected


def test_nan_is_not_json() -> None:
    assert (
        first_error(b'{"instruction": "a", "output": "b", "score": NaN}')
        == "line 1: malformed JSON: NaN is not valid JSON"
    )


def test_nul_and_control_characters_are_kept_as_is() -> None:
    (rec,), _ = parse_all(b'{"instruction": "a\\u0000b", "output": "tab\there\\u001b[0m"}\n')
    assert rec.instruction == "a\x00b"
    assert rec.output == "tab\there\x1b[0m"


def test_lone_surrogate_is_refused_but_a_surrogate_pair_is_kept() -> None:
    (rec,), _ = parse_all(b'{"instruction": "smile \\ud83d\\ude00", "output": "b"}')
    assert rec.instruction == "smile \U0001f600"
    assert first_error(b'{"instruction": "a", "output": "b\\uDC00"}') == (
        'line 1: field "output": invalid Unicode: unpaired surrogate U+DC00'
    )


def test_one_bad_line_fails_the_whole_parse_unless_skipping() -> None:
    data = jsonl(
        {"instruction": "a", "output": "1"},
        {"instruction": "b"},
        {"instruction": "c", "output": "3"},
        {"instruction": "d", "output": 4},
    )
    assert first_error(data) == 'line 2: field "output": required field is missing'
    good, bad = parse_all(data, skip_bad=True)
    assert [(r.instruction, r.line) for r in good] == [("a", 1), ("c", 3)]
    assert bad == [
        BadLine(2, "output", "required field is missing"),
        BadLine(4, "output", "expected string, got number"),
    ]


# ----------------------------------------------------------------------------------------- writers


def test_writers_produce_the_documented_shapes() -> None:
    recs: list[dict[str, Any]] = [
        {"instruction": "Add.", "input": "1 2", "output": "3", "messages": None, "system": "Be exact."},
        {
            "instruction": "u1",
            "input": "",
            "output": "a1",
            "messages": [
                {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2"},
            ],
            "system": None,
        },
    ]
    out = io.StringIO()
    write_alpaca(recs, out)
    assert json.loads(out.getvalue()) == [
        {"instruction": "Add.", "input": "1 2", "output": "3", "system": "Be exact."},
        {"instruction": "u2", "input": "", "output": "a2", "history": [["u1", "a1"]]},
    ]
    out = io.StringIO()
    write_sharegpt(recs[:1], out)
    assert json.loads(out.getvalue()) == [
        {
            "conversations": [
                {"from": "system", "value": "Be exact."},
                {"from": "human", "value": "Add.\n\n1 2"},
                {"from": "gpt", "value": "3"},
            ]
        }
    ]
    out = io.StringIO()
    assert write_openai_jsonl(recs, out) == 2
    lines = out.getvalue().splitlines()
    assert json.loads(lines[1]) == {"messages": recs[1]["messages"]}


def test_writers_keep_non_ascii_readable() -> None:
    out = io.StringIO()
    write_openai_jsonl([{"instruction": "给出三个秘诀", "input": "", "output": "好"}], out)
    assert "给出三个秘诀" in out.getvalue()


def test_empty_export_is_valid_json() -> None:
    out = io.StringIO()
    assert write_alpaca([], out) == 0
    assert json.loads(out.getvalue()) == []


texts = st.text(max_size=30)
roles = st.sampled_from(["user", "assistant"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"instruction": texts, "input": texts, "output": texts, "system": st.none() | st.text(min_size=1)}
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_single_turn_record_survives_alpaca_round_trip(recs: list[dict[str, Any]]) -> None:
    for exporter in ("alpaca", "alpaca_jsonl"):
        buf = io.StringIO()
        EXPORTERS[exporter][0](recs, buf)
        again, _ = parse_all(buf.getvalue().encode(), fmt="alpaca")
        assert [(r.instruction, r.input, r.output, r.system) for r in again] == [
            (r["instruction"], r["input"], r["output"], r["system"]) for r in recs
        ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(roles, texts), min_size=3, max_size=8).map(
            lambda turns: [{"role": role, "content": text} for role, text in turns]
        ),
        min_size=1,
        max_size=4,
    ),
    st.none() | st.text(min_size=1),
)
def test_any_conversation_survives_sharegpt_and_openai_round_trips(
    conversations: list[list[dict[str, str]]], system: str | None
) -> None:
    recs = [
        {"instruction": "", "input": "", "output": "", "messages": c, "system": system} for c in conversations
    ]
    for exporter in ("sharegpt", "openai"):
        buf = io.StringIO()
        EXPORTERS[exporter][0](recs, buf)
        again, _ = parse_all(buf.getvalue().encode())
        assert [to_messages(as_dict(r)) for r in again] == [to_messages(r) for r in recs]


# ------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_for_a_seed_and_partitions_in_order() -> None:
    items = list(range(1000))
    train, val = split(items, val_fraction=0.1, seed=7)
    assert (train, val) == split(items, val_fraction=0.1, seed=7)
    assert len(val) == 100
    assert sorted(train + val) == items
    assert train == sorted(train) and val == sorted(val)
    assert split(items, val_fraction=0.1, seed=8)[1] != val


def test_split_of_a_tiny_dataset_keeps_one_record_on_each_side() -> None:
    assert tuple(map(len, split(["a", "b"], val_fraction=0.01, seed=0))) == (1, 1)
    assert split(["a", "b", "c"], val_fraction=0.0, seed=0) == (["a", "b", "c"], [])
    assert split(["a"], val_fraction=0.5, seed=0) == (["a"], [])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_refuses_a_fraction_outside_zero_to_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split([1, 2, 3], val_fraction=fraction, seed=0)
