"""Every quality rule on real examples it must reject and real examples it must keep."""

from __future__ import annotations

import itertools
import json

import pytest

from app.pipeline.langid import detect_language
from app.pipeline.rules import RULES, RuleConfig, RuleHit, evaluate, funnel
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


# Issue 14 §4: what the language rules did to the 350 human-written seed tasks.


@pytest.fixture(scope="module")
def zh_seeds(shared_data):
    return [json.loads(line) for line in (shared_data / "belle" / "zh_seed_tasks.json").open()]


def seed_codes(task: dict, language: str) -> list[str]:
    instance = task["instances"][0]
    return codes(
        instruction=task["instruction"], input=instance["input"], output=instance["output"], language=language
    )


def by_id(tasks: list[dict], *ids: int) -> list[dict]:
    wanted = {f"seed_task_{i}" for i in ids}
    found = [t for t in tasks if t["id"] in wanted]
    assert len(found) == len(wanted)
    return found


def test_no_seed_task_breaks_language_mismatch(seeds, zh_seeds):
    # Was 14 English and 16 Chinese seeds ("Write a knock knock joke about bananas." -> "instruction is pt").
    flagged = [t["id"] for t in seeds if "language_mismatch" in seed_codes(t, "en")]
    flagged += [t["id"] for t in zh_seeds if "language_mismatch" in seed_codes(t, "zh")]
    assert flagged == []


def test_short_english_instructions_are_english_not_portuguese(seeds):
    for task in by_id(seeds, 11, 24, 52, 55, 63, 84, 93, 124):  # knock knock joke, grocery list, dad joke...
        assert detect_language(task["instruction"]) == "en", task["instruction"]


def test_an_equation_answer_is_in_no_language(seeds, zh_seeds):
    for task, language in ((by_id(seeds, 144)[0], "en"), (by_id(zh_seeds, 144)[0], "zh")):
        assert task["instances"][0]["output"].replace("\xa0", " ") == "x = 3, y = 2"
        assert detect_language(task["instances"][0]["output"]) == "unknown"
        assert "language_mismatch" not in seed_codes(task, language)


def test_a_translation_task_is_not_flagged_for_the_language_it_translates_into(seeds, zh_seeds):
    english, chinese = by_id(seeds, 117)[0], by_id(zh_seeds, 117)[0]
    assert english["instruction"] == "Translate the English sentence into Chinese."
    assert detect_language(english["instances"][0]["output"]) == "zh"
    assert "language_mismatch" not in seed_codes(english, "en")
    assert "language_mismatch" not in seed_codes(chinese, "zh")
    # Asking for another language than the answer's is still a mismatch.
    assert "language_mismatch" in codes(
        instruction="Translate the English sentence into French.",
        input="She went to school on Monday.",
        output=chinese["instances"][0]["output"],
    )


def test_chinese_seed_answers_in_sql_code_fen_or_numbers_are_language_neutral(zh_seeds):
    # text_to_sql, regex, JavaScript, Python, LeetCode, chess FEN, equations, "1.00E+06"
    for task in by_id(zh_seeds, 50, 41, 140, 72, 31, 37, 139, 69, 141, 106, 35, 164):
        assert "language_mismatch" not in seed_codes(task, "zh"), task["name"]


def test_a_chinese_instruction_stays_chinese_when_its_input_is_code(zh_seeds):
    task = by_id(zh_seeds, 28)[0]  # "添加注释到给定的函数中..." with a Python function as input
    assert task["instances"][0]["input"].startswith("def")
    assert detect_language(task["instruction"]) == "zh"
    assert seed_codes(task, "zh") == []


def test_ends_with_colon_checks_instances_as_self_instruct_does(seeds):
    summarize = next(t for t in seeds if t["instruction"] == "Summarize this email into a single sentence:")
    assert summarize["instances"][0]["input"] and "ends_with_colon" not in seed_codes(summarize, "en")
    # prepare_for_finetuning.filter_invalid_instances: input or output ending with ':' is cut off.
    assert "ends_with_colon" in codes(
        instruction="Rewrite the text.", input="Here is the text to rewrite:", output="Done."
    )
    assert "ends_with_colon" in codes(instruction="List three fruits.", output="Here are three fruits:")
    assert "ends_with_colon" in codes(instruction="列出三种水果。", output="以下是三种水果：", language="zh")
    # A form or an analogy whose last field the output fills is not cut off (two seed tasks are so).
    assert "ends_with_colon" not in codes(
        instruction="Write the adjectives that represent the given religions.",
        input="Atheism:\nChristianity:\nIslam:",
        output="Atheism: secular.\nChristianity: spiritual.\nIslam: devout.",
    )
    # During generation (no instance yet) the rule has nothing to check.
    assert "ends_with_colon" not in codes(instruction="Summarize this email into a single sentence:")


def test_an_english_instruction_in_a_chinese_dataset_is_flagged(shared_data):
    hits = evaluate(instruction="Use a table to present the result.", output="| 年份 | 销量 |", language="zh")
    assert RuleHit("dataset_language", "instruction is en, dataset is zh") in hits
    assert "dataset_language" not in codes(instruction="Use a table to present the result.", language="en")
    # At generation time too: a generated English instruction for a Chinese dataset.
    assert "dataset_language" in codes(instruction="Use a table to present the result.", language="zh")
    # A Chinese instruction that quotes English, and a named translation, are in their dataset's language.
    assert "dataset_language" not in codes(
        instruction="翻译下面这个句子：I will always remember the day we met for the first time.",
        language="zh",
    )
    assert "dataset_language" not in codes(
        instruction="Translate 'bonjour tout le monde' into Chinese.", language="en"
    )
    # No declared language to hold records to.
    assert "dataset_language" not in codes(instruction="Use a table to present the result.", language="mul")

    def queries(lang: str) -> list[str]:
        return [
            json.loads(line)["query"]
            for line in (shared_data / f"llmzoo/multilingual/{lang}100.jsonl").open()
        ]

    def flagged(lang: str, dataset: str) -> int:
        return sum("dataset_language" in codes(instruction=q, language=dataset) for q in queries(lang))

    # Five English queries ask to translate "into English", so English is named: kept, as it should be.
    assert flagged("en", "zh") >= 90 and flagged("zh", "en") >= 95 and flagged("de", "en") >= 90
    assert flagged("en", "en") == 0 and flagged("zh", "zh") == 0


def test_language_mismatch_still_catches_real_answers_in_another_language(shared_data):
    def queries(lang: str) -> list[str]:
        return [
            json.loads(line)["query"]
            for line in (shared_data / f"llmzoo/multilingual/{lang}100.jsonl").open()
        ]

    en, zh, fr = queries("en"), queries("zh"), queries("fr")
    assert (
        sum("language_mismatch" in codes(instruction=q, output=a) for q, a in zip(en, zh, strict=True))
        >= 90  # 5 of the English queries are "translate into English"
    )
    assert (
        sum("language_mismatch" in codes(instruction=q, output=a) for q, a in zip(en, fr, strict=True)) >= 85
    )
    assert sum("language_mismatch" in codes(instruction=q, output=a) for q, a in itertools.pairwise(en)) == 0


def test_rules_keep_what_people_write_and_still_catch_generation_defects(shared_data, seeds):
    # A short instruction is a whole task when its input holds the material (3 seed tasks).
    assert "instruction_length" not in codes(
        instruction="Solve this equation.", input="x^3 - 4x^2 + 6x - 24 = 0", output="x = 4"
    )
    assert "instruction_length" in codes(instruction="Solve this equation.", output="x = 4")
    # Self-Instruct's "Write a program" filter is for generated instructions; a seed task asks for one.
    program = by_id(seeds, 139)[0]
    assert "write_a_program" not in seed_codes(program, "en")
    assert "write_a_program" in codes(instruction=program["instruction"])
    # Narrative mentions are not requests; requests and pointers at missing pictures are.
    gsm8k = json.loads((shared_data / "alpacadatacleaned/gsm_8k_train.json").read_text())
    narrative = [
        r for r in gsm8k if any(w in r["instruction"] for w in (" go to ", " video ", " files ", " map "))
    ]
    assert len(narrative) > 50
    assert not [
        r["instruction"]
        for r in narrative
        if "blacklist" in codes(instruction=r["instruction"], output=r["output"])
    ]
    assert "blacklist" in codes(instruction="Classify the bird in the photo.", output="It is an eagle.")
    assert "blacklist" in codes(instruction="对照片中的鸟进行分类。", output="白头鹰。", language="zh")
    # "[Your Name]" under a letter, a name hidden as XXX in a given e-mail: how people write.
    assert "placeholder" not in codes(
        instruction="Write a thank-you note.", output="Thanks again,\n[Your Name]"
    )
    assert "placeholder" not in codes(
        instruction="Is this a promotion e-mail?", input="Hi, XXX. Your order shipped.", output="no"
    )
    # An AI-assistant persona asked for is not a disclaimer.
    assert "refusal" not in codes(
        instruction="作为一名AI语音助手，介绍你的日常工作。",
        output="作为一名AI语音助手，我每天……",
        language="zh",
    )
    # Step-by-step solutions repeat their phrasing (GSM8K, up to 73 % before); a loop still counts.
    amoeba = next(r for r in gsm8k if r["instruction"].startswith("An amoeba reproduces by fission"))
    assert "ngram_repetition" not in codes(instruction=amoeba["instruction"], output=amoeba["output"])
