"""Every quality rule on real examples it must reject and real examples it must keep."""

from __future__ import annotations

import json

import pytest

from app.pipeline.langid import detect_language
from app.pipeline.rules import RULES, RuleConfig, evaluate, funnel
from app.pipeline.textnorm import exact_duplicates, normalize


def codes(**kw) -> list[str]:
    return [h.code for h in evaluate(**kw)]


@pytest.fixture(scope="module")
def seeds(shared_data):
    return [json.loads(line) for line in (shared_data / "self-instruct" / "seed_tasks.jsonl").open()]


@pytest.fixture(scope="module")
def h2o(shared_data):
    rows = []
    for f in sorted((shared_data / "h2o-wizardlm").glob("*.json")):
        rows += json.loads(f.read_text())
    return rows


def test_real_seed_instructions_pass_the_instruction_rules(seeds):
    flagged = {s["instruction"]: codes(instruction=s["instruction"]) for s in seeds}
    bad = {k: v for k, v in flagged.items() if v}
    # The human-written seeds are what the rules protect: nearly all must pass (a few are genuinely short).
    assert len(bad) <= 10, bad


def test_instruction_length_in_words_and_cjk_characters():
    assert "instruction_length" in codes(instruction="Summarize this.")
    assert "instruction_length" not in codes(instruction="Summarize the following article briefly.")
    assert "instruction_length" in codes(instruction=" ".join(["word"] * 151))
    assert "instruction_length" in codes(instruction="翻译", language="zh")
    assert "instruction_length" not in codes(instruction="如何提高我的时间管理技能？", language="zh")


@pytest.mark.parametrize(
    "text",
    [
        "Draw a picture of a sunset over the sea.",
        "Plot the sales figures for 2020.",
        "Create a flowchart of the login process.",
        "Upload the file to the server now.",
        "Go to the website and tell me the price.",
        "请为这首诗画一幅插图并附上图片。",
    ],
)
def test_blacklist_rejects_requests_for_non_text_output(text):
    assert "blacklist" in codes(instruction=text, language="zh" if "诗" in text else "en")


@pytest.mark.parametrize(
    "text",
    [
        "Explain what a profile of a company is.",
        "Give a drawback of remote work.",
        "Describe the plotline of Hamlet in three sentences.",
        "如何提高我的时间管理技能？",
    ],
)
def test_blacklist_is_whole_word_and_keeps_innocent_text(text):
    assert "blacklist" not in codes(instruction=text)


def test_punctuation_program_and_non_ascii_openings():
    assert "starts_with_punctuation" in codes(instruction="- list three colours of the rainbow")
    assert "starts_with_punctuation" not in codes(instruction='"Hello" is a word; translate it into French.')
    assert "write_a_program" in codes(instruction="Write a program that sorts a list of numbers.")
    assert "write_a_program" not in codes(instruction="Write a poem about the sea in four lines.")
    assert "non_ascii_start" in codes(instruction="¿Cómo estás? Answer in English please.", language="en")
    assert "non_ascii_start" not in codes(instruction="如何提高我的时间管理技能？", language="zh")


def test_output_rules_on_real_h2o_wizardlm_failures(h2o):
    empty = [r for r in h2o if not r["output"].strip()]
    assert len(empty) == 6
    assert all("empty_output" in codes(instruction=r["input"][:500], output=r["output"]) for r in empty)
    disclaimers = [r for r in h2o if "as an ai language model" in r["output"].lower()]
    assert disclaimers and all(
        "refusal" in codes(instruction=r["input"][:500], output=r["output"]) for r in disclaimers
    )
    good = [
        r
        for r in h2o
        if r["output"].strip()
        and "as an ai" not in r["output"].lower()
        and "sorry" not in r["output"].lower()
    ]
    assert all("refusal" not in codes(instruction=r["input"], output=r["output"]) for r in good)


def test_chinese_ai_disclaimer_is_a_refusal():
    out = "作为一个AI语言模型，我没有个人观点，但我可以提供一些建议。"
    assert "refusal" in codes(instruction="你最喜欢的电影是什么？请说明理由。", output=out, language="zh")


def test_input_equal_output_and_trailing_colon():
    assert "input_equals_output" in codes(
        instruction="Repeat the sentence exactly.", input="Hi there.", output="Hi there."
    )
    assert "ends_with_colon" in codes(
        instruction="List the steps to bake bread:", output="Here are the steps:"
    )
    assert "ends_with_colon" not in codes(
        instruction="List the steps to bake bread.", output="Mix, knead, bake."
    )


def test_language_mismatch_with_real_parallel_questions(shared_data):
    zh = [json.loads(line)["query"] for line in (shared_data / "llmzoo/multilingual/zh100.jsonl").open()]
    en = [json.loads(line)["query"] for line in (shared_data / "llmzoo/multilingual/en100.jsonl").open()]
    de = [json.loads(line)["query"] for line in (shared_data / "llmzoo/multilingual/de100.jsonl").open()]
    mismatched = sum(
        "language_mismatch" in codes(instruction=q, output=a, language="zh")
        for q, a in zip(zh, en, strict=True)
    )
    matched = sum(
        "language_mismatch" in codes(instruction=q, output=a, language="zh")
        for q, a in zip(zh, zh[1:] + zh[:1], strict=True)
    )
    assert mismatched >= 95 and matched == 0
    assert sum(detect_language(q) == "de" for q in de) >= 80
    assert sum(detect_language(q) == "en" for q in en) >= 95


def test_heavy_repetition_and_placeholders():
    looped = "The answer is yes. " * 30
    assert "ngram_repetition" in codes(instruction="Is the sky blue on a clear day?", output=looped)
    normal = (
        "Rayleigh scattering makes short wavelengths scatter more strongly, so the sky looks blue, while "
        "sunsets look red because light crosses more air near the horizon and the blue light is lost."
    )
    assert "ngram_repetition" not in codes(instruction="Why is the sky blue on a clear day?", output=normal)
    assert "placeholder" in codes(instruction="Summarize the text below.", input="<noinput>", output="Fine.")
    assert "placeholder" in codes(instruction="Write a letter to [insert name] about the meeting.")
    assert "placeholder" in codes(instruction="Call XXX tomorrow and confirm the order please.")
    assert "placeholder" not in codes(instruction="Explain the XXXL clothing size to a customer.")


def test_config_selects_rules_and_overrides_params_and_funnel_counts_first_hit():
    text = "Summarize this."
    assert codes(instruction=text, config=RuleConfig(enabled=["blacklist"])) == []
    relaxed = RuleConfig(params={"instruction_length": {"min_words": 1}})
    assert "instruction_length" not in codes(instruction=text, config=relaxed)
    with pytest.raises(ValueError, match="unknown rule codes: nope"):
        evaluate(instruction=text, config=RuleConfig(enabled=["nope"]))
    hits = [
        evaluate(instruction="Draw a map.", output=""),
        evaluate(instruction="Explain gravity to a child.", output="Things fall."),
    ]
    assert funnel(hits) == {"instruction_length": 1}
    assert all(r.description and r.code for r in RULES.values())


def test_exact_duplicates_ignore_case_width_spaces_and_cjk_punctuation():
    items = [
        ("a", "Hello,  World!"),
        ("b", "ｈｅｌｌｏ， world！"),
        ("c", "你好。世界"),
        ("d", "你好.世界"),
        ("e", "Hello World"),
    ]
    assert exact_duplicates(items) == {"b": "a", "d": "c"}
    assert normalize("  Ｔｅｓｔ\u3000ＩＮＧ  ") == "test ing"
