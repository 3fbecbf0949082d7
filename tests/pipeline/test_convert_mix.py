"""Converting real NLP data into instruction records, and mixing real datasets with cross-source dedup."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.pipeline.convert import (
    NATURAL_INSTRUCTIONS_TEMPLATE,
    ConvertError,
    Template,
    convert_rows,
    read_table,
)
from app.pipeline.mix import allocate, mix
from app.pipeline.rouge import nearest_neighbours, rouge_l
from app.pipeline.textnorm import normalize

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real datasets not found at {DATA}")


def _jsonl(name: str) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()
    ]


@pytest.fixture(scope="module")
def belle_rows() -> list[dict[str, Any]]:
    """BELLE's Chinese test set: named columns question / std_answer / class."""
    return [r for r in _jsonl("belle/eval_set.json") if r["std_answer"]][:300]


QA_TEMPLATES = [
    Template(
        name="answer",
        instruction="回答下面的问题。",
        input="{question}",
        output="{std_answer}",
        inverse_instruction="为下面的答案写一个问题。",
    ),
    Template(
        name="plain",
        instruction="{question}",
        output="{std_answer}",
        inverse_instruction="下面的回答对应的问题是什么？",
    ),
    Template(
        name="typed",
        instruction="这是一个{class}类的问题，请给出答案。",
        input="{question}",
        output="{std_answer}",
    ),
]


def test_csv_jsonl_and_parquet_give_the_same_rows(belle_rows, tmp_path):
    columns = ["question", "std_answer", "class"]
    with (tmp_path / "qa.csv").open("w", encoding="utf-8", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: r[c] for c in columns} for r in belle_rows)
    (tmp_path / "qa.jsonl").write_text(
        "".join(json.dumps({c: r[c] for c in columns}, ensure_ascii=False) + "\n" for r in belle_rows),
        encoding="utf-8",
    )
    pq.write_table(
        pa.Table.from_pylist([{c: r[c] for c in columns} for r in belle_rows]), tmp_path / "qa.parquet"
    )

    from_csv = list(read_table(tmp_path / "qa.csv"))
    assert from_csv == list(read_table(tmp_path / "qa.jsonl")) == list(read_table(tmp_path / "qa.parquet"))
    assert from_csv[0]["question"] == belle_rows[0]["question"]
    # The original file is JSON Lines named .json: read as such.
    assert len(list(read_table(DATA / "belle" / "eval_set.json"))) == 1000


def test_templates_are_drawn_at_random_and_the_seed_makes_it_reproducible(belle_rows):
    first = convert_rows(belle_rows, templates=QA_TEMPLATES, seed=1)
    again = convert_rows(belle_rows, templates=QA_TEMPLATES, seed=1)
    other = convert_rows(belle_rows, templates=QA_TEMPLATES, seed=2)
    assert first == again
    assert [r["meta"]["template"] for r in first] != [r["meta"]["template"] for r in other]
    used = Counter(r["meta"]["template"] for r in first)
    assert set(used) == {"answer", "plain", "typed"}
    assert min(used.values()) > len(belle_rows) / 6
    row, record = belle_rows[0], first[0]
    assert record["output"] == row["std_answer"].strip()
    assert row["question"].strip() in record["instruction"] + record["input"]


def test_invert_asks_for_the_question_of_an_answer(belle_rows):
    records = convert_rows(belle_rows, templates=QA_TEMPLATES, seed=3, invert=True)
    assert len(records) == len(belle_rows)
    for row, record in zip(belle_rows, records, strict=True):
        assert record["meta"]["inverted"] is True
        assert record["meta"]["template"] in {"answer", "plain"}  # "typed" has no inverse
        assert record["input"] == row["std_answer"].strip()
        assert record["output"] == row["question"].strip()


def test_invert_without_inverse_templates_is_refused(belle_rows):
    with pytest.raises(ConvertError, match="inverse_instruction"):
        convert_rows(belle_rows, templates=[QA_TEMPLATES[2]], seed=0, invert=True)


def test_missing_column_names_the_row_and_the_column(belle_rows):
    template = Template(instruction="{question}", output="{answer}")
    with pytest.raises(ConvertError, match=r"row 1.*'answer'"):
        convert_rows(belle_rows, templates=[template], seed=0)


def test_natural_instructions_task_gives_one_record_per_instance(belle_rows, tmp_path):
    task = {
        "Definition": ["Answer the question in Chinese."],
        "Positive Examples": [],
        "Instances": [
            {"id": f"t-{i}", "input": r["question"], "output": [r["std_answer"]]}
            for i, r in enumerate(belle_rows[:50])
        ],
    }
    path = tmp_path / "task001_belle.json"
    path.write_text(json.dumps(task, ensure_ascii=False), encoding="utf-8")
    records = convert_rows(read_table(path), templates=[NATURAL_INSTRUCTIONS_TEMPLATE], seed=0)
    assert len(records) == 50
    assert records[0]["instruction"] == "Answer the question in Chinese."
    assert records[0]["input"] == belle_rows[0]["question"].strip()
    assert records[0]["output"] == belle_rows[0]["std_answer"].strip()


# -- mixing ---------------------------------------------------------------------------------------------


def test_weights_split_the_total_and_redistribute_what_a_small_source_lacks():
    assert allocate({"a": 1000, "b": 1000}, weights={"a": 3, "b": 1}, total=400) == {"a": 300, "b": 100}
    assert allocate({"a": 50, "b": 1000}, weights={"a": 1, "b": 1}, total=400) == {"a": 50, "b": 350}
    assert allocate({"a": 10, "b": 10}, quotas={"a": 4, "b": 99}) == {"a": 4, "b": 10}
    assert sum(allocate({"a": 7, "b": 7, "c": 7}, weights={"a": 1, "b": 1, "c": 1}, total=10).values()) == 10
    with pytest.raises(ValueError, match="unknown"):
        allocate({"a": 1}, quotas={"z": 1})


def test_mix_removes_the_real_cross_source_duplicates_between_alpaca_eval_and_self_instruct():
    """AlpacaEval's 252 'selfinstruct' prompts are self-instruct's user-oriented instruction + input."""
    eval_rows = json.loads((DATA / "alpaca_eval" / "text_davinci_003.model_outputs.json").read_text())
    user_rows = _jsonl("self-instruct/user_oriented_instructions.jsonl")
    user = [(r["instruction"] + "\n\n" + r["instances"][0]["input"]).strip() for r in user_rows]
    result = mix(
        {"self_instruct": user, "alpaca_eval": [r["instruction"] for r in eval_rows]},
        seed=0,
        text=lambda t: t,
    )
    exact = [d for d in result.dropped if d.reason == "exact_duplicate"]
    assert len(exact) >= 240
    for d in exact:
        assert d.source == "alpaca_eval"
        assert d.duplicate_of is not None
        assert d.duplicate_of[0] == "self_instruct"
        assert normalize(eval_rows[d.index]["instruction"]) == normalize(user[d.duplicate_of[1]])
    assert len(result.items) + len(result.dropped) == len(user) + len(eval_rows)
    assert sum(result.kept.values()) == len(result.items)
    neighbours = nearest_neighbours([(str(i), t) for i, t in enumerate(result.items)], floor=0.7)
    assert max(score for score, _ in neighbours) <= 0.7


def test_mix_drops_near_duplicate_templates_of_the_same_questions_with_their_neighbour():
    t0 = DATA / "self-instruct" / "t0_train_50k"
    first = [r["prompt"] for r in _jsonl(str((t0 / "glue_qqp_duplicate.jsonl").relative_to(DATA)))]
    second = [r["prompt"] for r in _jsonl(str((t0 / "glue_qqp_same_thing.jsonl").relative_to(DATA)))]
    sources = {"duplicate": first, "same_thing": second}
    result = mix(sources, quotas={"duplicate": 150, "same_thing": 150}, seed=4, text=lambda t: t)
    assert result.selected == {"duplicate": 150, "same_thing": 150}
    near = [d for d in result.dropped if d.reason == "near_duplicate"]
    assert near
    for d in near:
        assert d.score is not None and d.score > 0.7
        assert d.duplicate_of is not None
        assert rouge_l(sources[d.source][d.index], sources[d.duplicate_of[0]][d.duplicate_of[1]]) == d.score
    assert sum(d.reason == "not_selected" for d in result.dropped) == len(first) + len(second) - 300
    again = mix(sources, quotas={"duplicate": 150, "same_thing": 150}, seed=4, text=lambda t: t)
    assert again.origins == result.origins
