"""A fake OpenAI-compatible teacher LLM for tests and benchmarks (the one test double we allow).

The real ``openai`` client talks to it over HTTP: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``. Answers are a deterministic function of the prompt, shaped like what real teachers return
for each of our prompt kinds (numbered lists in varied styles with chatter and truncation, Yes/No,
instances, evol rewrites, Equal/Not Equal, answers, judge scores in varied formats), in English or
Chinese as the prompt is. Faults and latency can be toggled over an admin API:

    POST /admin/faults    {"status": 429, "count": 5, "retry_after": 1}
    POST /admin/latency   {"ms": 300}
    POST /admin/responses {"match": "substring", "text": "...", "finish_reason": "length", "times": 1}
    POST /admin/judge     {"mode": "longer" | "first" | "reference" | "marker", "marker": "..."}
    GET  /admin/stats     requests received, completions served, per request hash
    POST /admin/batches   {"delay_s": 1, "fail_lines": 2, "expire_next": 1, "create_hold_s": 5}

The Batch API as OpenAI serves it: ``POST /v1/files`` (purpose ``batch``), ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches`` and ``/v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``. A
batch is ``in_progress`` for ``delay_s``, then answered line by line as the chat endpoint would; the
first ``fail_lines`` lines of the next batch go to its error file, an expired batch (``expire_next``)
answers only its first half, and ``create_hold_s`` holds the answer to ``POST /v1/batches`` after the
batch exists (a test kills the worker meanwhile). ``/admin/stats`` counts batches created.
    POST /admin/reset

In-process: ``with FakeTeacher.start(latency_ms=0) as fake: fake.base_url``.
As a process: ``python -m tests.fake_teacher --port 8123 [--latency-ms 300] [--script FILE]``; the script
is JSON ``{"latency_ms": 0, "faults": [...], "responses": [...], "judge": {"mode": "first"}}``.

Evaluation judges (``app/pipeline/prompts/*/pairwise.txt``, ``single.txt``) get verdicts in the varied
formats real judges write (``[[A]]``, JSON, "Final verdict: ...", Chinese), all readable, and chosen by
the judge mode: ``longer`` (the default: the longer answer wins, as real judges lean), ``first`` (always the
answer shown first: pure position bias), ``reference`` (the answer equal to the reference shown, else a
tie) or ``marker`` (the answer containing the marker string, else a tie). Single-answer ratings follow the
same mode. Unreadable verdicts are made with ``/admin/responses``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fake_teacher_answers import REASONING_CUES, REWRITE_CUES, answer_reasoning, answer_rewrite

# --------------------------------------------------------------------------------------------------
# Word lists: instructions are composed from these by hash, so a few hundred differ enough to pass a
# 0.7 ROUGE-L filter.

EN_TOPICS = """photosynthesis|the french revolution|compound interest|black holes|machine learning|climate change
|the water cycle|supply and demand|quantum computing|the roman empire|vaccines|renewable energy|blockchain
|the human heart|volcanoes|jazz music|impressionist painting|plate tectonics|inflation|the immune system
|sleep hygiene|remote work|urban gardening|electric cars|coral reefs|the stock market|neural networks
|ancient egypt|the olympic games|honeybees|the printing press|ocean tides|cloud computing|public speaking
|time management|the silk road|antibiotics|solar eclipses|minimalism|the internet of things|recycling
|chess openings|the cold war|meditation|coffee brewing|marathon training|dinosaurs|the periodic table
|social media marketing|bird migration|cybersecurity|the renaissance|glaciers|wine tasting|podcasting
|sustainable fashion|the moon landing|probability|origami|3d printing|rainforests|mental health
|the great wall of china|gene editing|hip hop history|small business loans|typography|earthquakes
|nutrition labels|space tourism|the byzantine empire|video game design|desert ecosystems|cryptography
|volunteering|board games|tea ceremonies|autonomous drones|the human genome|wind turbines|film noir
|stand-up comedy|the amazon river|personal budgeting|sign language|mushroom foraging|ballet|submarines
|the scientific method|microplastics|ancient greek theater|mars exploration|bread baking|fermentation"""
EN_AUDIENCES = """a five-year-old|a busy executive|high school students|a retired engineer|new parents
|a skeptical investor|first-year nurses|a tourist in tokyo|software interns|a museum visitor|beginner cooks
|a rural farmer|college athletes|a history teacher|a nervous job applicant|an online forum|small shop owners
|a book club|amateur astronomers|city planners|a visually impaired reader|exchange students"""
EN_FORMS = """haiku|limerick|short story|news headline|product description|tweet|cover letter|debate speech
|recipe|travel itinerary|lesson plan|podcast intro|riddle|slogan|poem|dialogue|movie pitch|press release
|job advertisement|diary entry|fable|letter of complaint|quiz|packing list|eulogy|song chorus"""
EN_OBJECTS = """a python function|an sql query|a regular expression|a bash script|a javascript snippet
|an excel formula|a json schema|a css rule|a unit test|a dockerfile|a git command|a rust struct"""
EN_CODE_TASKS = """reverses a linked list|validates an email address|counts word frequencies|merges two sorted lists
|finds duplicate rows|parses a date string|computes a moving average|removes html tags|detects palindromes
|flattens a nested dictionary|converts celsius to kelvin|checks balanced parentheses|paginates results"""
EN_CLASS_THINGS = """movie review|tweet|customer email|news headline|product review|restaurant comment
|support ticket|song lyric|forum post|job listing|text message|book blurb"""
EN_LABEL_SETS = [
    "positive or negative",
    "positive, negative or neutral",
    "spam or not spam",
    "urgent or not urgent",
    "formal or informal",
    "sports, politics, technology or entertainment",
    "true or false",
    "sarcastic or sincere",
]
EN_TEMPLATES = [
    "Write a {form} about {topic} for {audience}.",
    "Explain {topic} to {audience} using an everyday analogy.",
    "List five surprising facts about {topic}.",
    "Compose a {form} that mentions {topic} and {topic2}.",
    "What are the main arguments for and against {topic}?",
    "Summarize the history of {topic} in three sentences.",
    "Design a one-week study plan on {topic} for {audience}.",
    "Write {object} that {code_task}.",
    "Find the bug in the given {object} that {code_task}.",
    "Compare {topic} and {topic2} in a short table.",
    "Suggest three creative names for a startup focused on {topic}.",
    "How would you teach {topic} to {audience} in ten minutes?",
    "Rewrite the following paragraph about {topic} in a {adjective} tone.",
    "Give a step-by-step guide to getting started with {topic}.",
    "Describe a typical day of someone working in {topic}.",
    "Create a multiple-choice question testing knowledge of {topic}.",
    "Generate an interview question about {topic} for {audience}.",
    "Predict how {topic} might change over the next twenty years.",
    "Translate this sentence about {topic} into simple English for {audience}.",
    "Outline a {form} whose hero is obsessed with {topic}.",
    "Why do people often misunderstand {topic}?",
    "Estimate the cost of a small project involving {topic} and justify it.",
    "Draft an email inviting {audience} to a workshop on {topic}.",
    "Identify the ethical issues raised by {topic}.",
    "Propose an experiment that demonstrates {topic}.",
    "Turn the given notes on {topic} into a {form}.",
    "Recommend three books or resources about {topic} for {audience}.",
    "Convert the following recipe into a {form} about {topic}.",
    "Tell me a joke that connects {topic} with {topic2}.",
    "Argue persuasively that {topic} matters more than {topic2}.",
]
EN_CLASS_TEMPLATES = [
    "Classify the following {thing} as {labels}.",
    "Determine whether the given {thing} is {labels}.",
    "Read the {thing} below and label it as {labels}.",
]
EN_ADJECTIVES = [
    "playful",
    "formal",
    "sarcastic",
    "poetic",
    "urgent",
    "neutral",
    "optimistic",
    "academic",
    "casual",
    "dramatic",
]
EN_BAD = [
    "Draw a picture of {topic}.",
    "Hi.",
    "Plot a graph of {topic} over time and attach the image file.",
    "Go to the website of a museum about {topic} and report back.",
]

ZH_TOPICS = """光合作用|法国大革命|复利|黑洞|机器学习|气候变化|水循环|供求关系|量子计算|罗马帝国|疫苗|可再生能源
|区块链|人类心脏|火山|爵士乐|印象派绘画|板块构造|通货膨胀|免疫系统|睡眠卫生|远程办公|城市园艺|电动汽车|珊瑚礁
|股票市场|神经网络|古埃及|奥运会|蜜蜂|印刷术|潮汐|云计算|公众演讲|时间管理|丝绸之路|抗生素|日食|极简主义|物联网
|垃圾分类|国际象棋|冷战|冥想|咖啡冲泡|马拉松训练|恐龙|元素周期表|社交媒体营销|候鸟迁徙|网络安全|文艺复兴|冰川
|品茶|播客|可持续时尚|登月|概率论|折纸|三维打印|热带雨林|心理健康|长城|基因编辑|说唱音乐|小微企业贷款|字体设计
|地震|营养标签|太空旅游|拜占庭帝国|游戏设计|沙漠生态|密码学|志愿服务|桌游|茶道|无人机|人类基因组|风力发电
|黑色电影|相声|亚马逊河|个人理财|手语|蘑菇采集|芭蕾舞|潜水艇|科学方法|微塑料|古希腊戏剧|火星探测|烤面包|发酵"""
ZH_AUDIENCES = """五岁小孩|忙碌的高管|高中生|退休工程师|新手父母|谨慎的投资人|实习护士|东京游客|软件实习生|博物馆观众
|新手厨师|乡村农民|大学运动员|历史老师|紧张的求职者|网络论坛|小店老板|读书会|天文爱好者|城市规划师"""
ZH_FORMS = """俳句|打油诗|短篇故事|新闻标题|商品介绍|微博|求职信|辩论稿|菜谱|旅行行程|教案|播客开场白|谜语|广告语
|诗歌|对话|电影提案|新闻稿|招聘启事|日记|寓言|投诉信|小测验|行李清单|歌词副歌"""
ZH_TEMPLATES = [
    "为{audience}写一篇关于{topic}的{form}。",
    "用日常生活中的比喻向{audience}解释{topic}。",
    "列出五个关于{topic}的冷知识。",
    "创作一首同时提到{topic}和{topic2}的{form}。",
    "支持和反对{topic}的主要理由分别是什么？",
    "用三句话概括{topic}的发展历史。",
    "为{audience}制定一份为期一周的{topic}学习计划。",
    "比较{topic}与{topic2}的异同，并列成表格。",
    "给一家专注于{topic}的创业公司起三个有创意的名字。",
    "如何在十分钟内把{topic}讲给{audience}听？",
    "把下面这段关于{topic}的文字改写得更{adjective}。",
    "给出入门{topic}的详细步骤。",
    "描述一位从事{topic}工作的人典型的一天。",
    "出一道考查{topic}知识的选择题。",
    "预测未来二十年{topic}可能发生的变化。",
    "为什么人们常常误解{topic}？",
    "起草一封邀请{audience}参加{topic}讲座的邮件。",
    "指出{topic}引发的伦理问题。",
    "设计一个能演示{topic}的小实验。",
    "推荐三本适合{audience}的{topic}读物。",
    "讲一个把{topic}和{topic2}联系起来的笑话。",
    "论证{topic}比{topic2}更重要。",
    "假如你是{audience}，你会怎样向朋友推荐{topic}？",
    "以{adjective}的口吻给{audience}写一段{topic}科普短文。",
    "请解释为什么{topic}会影响我们的日常饮食习惯。",
    "用不超过一百字说明{topic}背后的核心思想。",
    "设想一个发生在{topic}博物馆里的悬疑故事开头。",
    "帮我把关于{topic}的会议纪要整理成待办清单。",
    "从经济学角度分析{topic}带来的机遇与风险。",
    "写五条关于{topic}的常见误区及纠正方法。",
    "如果明天{topic}突然消失，世界会怎样？",
    "给{audience}设计三道有趣的{topic}互动游戏。",
    "对比十年前和现在人们对{topic}的看法。",
    "编一段两人围绕{topic}展开争论的对话。",
    "列举{topic}领域最有影响力的三项发明并说明理由。",
    "根据{topic}的特点为{form}拟一个吸引人的标题。",
    "怎样用一张图表向{audience}展示{topic}的数据趋势？",
]
ZH_CLASS_THINGS = [
    "影评",
    "微博",
    "顾客邮件",
    "新闻标题",
    "商品评价",
    "餐厅点评",
    "工单",
    "歌词",
    "论坛帖子",
    "短信",
]
ZH_LABEL_SETS = ["正面或负面", "正面、负面或中性", "垃圾信息或正常信息", "紧急或不紧急", "正式或口语"]
ZH_CLASS_TEMPLATES = ["判断下面这条{thing}属于{labels}。", "把给定的{thing}分类为{labels}。"]
ZH_ADJECTIVES = ["幽默", "正式", "诗意", "紧迫", "中立", "乐观", "学术", "随意", "夸张"]


def _words(block: str) -> list[str]:
    return [w.strip() for w in block.replace("\n", "").split("|") if w.strip()]


LISTS = {
    "en": {
        "topic": _words(EN_TOPICS),
        "audience": _words(EN_AUDIENCES),
        "form": _words(EN_FORMS),
        "object": _words(EN_OBJECTS),
        "code_task": _words(EN_CODE_TASKS),
        "thing": _words(EN_CLASS_THINGS),
        "adjective": EN_ADJECTIVES,
    },
    "zh": {
        "topic": _words(ZH_TOPICS),
        "audience": _words(ZH_AUDIENCES),
        "form": _words(ZH_FORMS),
        "thing": ZH_CLASS_THINGS,
        "adjective": ZH_ADJECTIVES,
    },
}

STOP_ANSWER = {"en": "the of and to . , ; ...", "zh": "的 了 和 。 ，……"}
SORRY = {"en": "I'm sorry, but I can't help with that request.", "zh": "抱歉，我无法帮助完成这个请求。"}

# --------------------------------------------------------------------------------------------------
# Answers


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _fill(template: str, lang: str, rng: random.Random) -> str:
    lists = LISTS[lang]
    values: dict[str, str] = {}
    for name in re.findall(r"{(\w+)}", template):
        if name == "topic2":
            others = [t for t in lists["topic"] if t != values.get("topic")]
            values[name] = rng.choice(others)
        elif name == "labels":
            values[name] = rng.choice(EN_LABEL_SETS if lang == "en" else ZH_LABEL_SETS)
        else:
            values[name] = rng.choice(lists[name])
    if "topic" in values and "topic2" in template and "topic2" not in values:
        values["topic2"] = rng.choice(lists["topic"])
    text = template.format(**values)
    return text[0].upper() + text[1:] if lang == "en" else text


EN_CONTEXTS = [
    "I run a small bakery.",
    "My team is preparing a workshop.",
    "For a school newsletter:",
    "I am learning this on my own.",
    "We have a meeting tomorrow morning.",
    "My grandmother keeps asking about this.",
    "For a podcast episode next week:",
    "I am writing a grant proposal.",
    "Our club meets on Fridays.",
    "I only have my phone with me.",
]
EN_CONSTRAINTS = [
    "Keep it under fifty words.",
    "Use a numbered list.",
    "Avoid technical jargon.",
    "End with an open question.",
    "Mention at least one real statistic.",
    "Write it as a table with two columns.",
    "Include a short example.",
    "Use a friendly, encouraging voice.",
    "Do not use the letter z.",
    "Add a one-line summary at the end.",
    "Cite two possible sources.",
    "Make every sentence start with a verb.",
    "Give the answer in exactly three paragraphs.",
    "Highlight the most common mistake.",
]
ZH_CONTEXTS = [
    "我开了一家小面包店。",
    "我们团队下周要办培训。",
    "为校报专栏准备：",
    "我正在自学。",
    "明早要开会。",
    "奶奶总问我这个。",
]
ZH_CONSTRAINTS = [
    "不超过五十字。",
    "用编号列表回答。",
    "避免专业术语。",
    "结尾提一个开放式问题。",
    "至少引用一个真实数据。",
    "用两列表格呈现。",
    "附上一个简短例子。",
    "语气亲切鼓励。",
    "最后用一句话总结。",
    "指出最常见的错误。",
]


def compose_instruction(lang: str, rng: random.Random) -> str:
    """A fresh instruction: ~12% classification tasks, the rest from the ordinary templates.

    Optional context and constraint clauses multiply the combinations, as real teachers vary their tasks,
    so that a few hundred instructions stay below a 0.7 ROUGE-L with each other.
    """
    if rng.random() < 0.12:
        return _fill(rng.choice(EN_CLASS_TEMPLATES if lang == "en" else ZH_CLASS_TEMPLATES), lang, rng)
    core = _fill(rng.choice(EN_TEMPLATES if lang == "en" else ZH_TEMPLATES), lang, rng)
    contexts, constraints = (EN_CONTEXTS, EN_CONSTRAINTS) if lang == "en" else (ZH_CONTEXTS, ZH_CONSTRAINTS)
    sep = " " if lang == "en" else ""
    if rng.random() < 0.35:
        core = rng.choice(contexts) + sep + core
    if rng.random() < 0.6:
        core = core + sep + rng.choice(constraints)
    return core


def _in_context(prompt: str) -> list[str]:
    marker = re.search(r"(?:Come up with a series of tasks|请想出一系列任务)[:：]\s*\n", prompt)
    body = prompt[marker.end() :] if marker else prompt
    return [m.group(1).strip() for m in re.finditer(r"^\d+\.\s+(.+)$", body, re.M)]


def answer_instructions(prompt: str, lang: str, *, legacy: bool, max_tokens: int) -> tuple[str, str]:
    rng = _rng("instructions", prompt)
    examples = _in_context(prompt)
    start = len(examples) + 1
    items: list[str] = []
    for n in range(rng.randint(6, 12)):
        roll = rng.random()
        if roll < 0.12 and examples:
            # A near copy of an in-context example: what the ROUGE-L filter is for.
            base = rng.choice(examples)
            items.append(("Please " + base[0].lower() + base[1:]) if lang == "en" else "请" + base)
        elif roll < 0.17 and lang == "en":
            items.append(_fill(rng.choice(EN_BAD), lang, rng))
        else:
            items.append(compose_instruction(lang, _rng("item", prompt, n)))
    style = rng.choice(["plain", "paren", "task", "bold", "heading"])
    lines = []
    for k, item in enumerate(items):
        num = start + k
        if legacy and k == 0:
            lines.append(f" {item}")
        elif style == "plain":
            lines.append(f"{num}. {item}")
        elif style == "paren":
            lines.append(f"{num}) {item}")
        elif style == "task":
            lines.append(f"Task {num}: {item}" if lang == "en" else f"任务{num}：{item}")
        elif style == "bold":
            lines.append(f"**{num}.** {item}")
        else:
            lines.append(f"### {num}. {item}")
    text = "\n".join(lines)
    if not legacy and rng.random() < 0.4:
        text = (
            "Sure! Here are some more tasks:\n\n" if lang == "en" else "好的，下面是更多任务：\n\n"
        ) + text
    finish = "stop"
    if rng.random() < 0.25:
        # Cut mid-item, as a teacher hitting its length limit does.
        cut = text.rfind(" ", 0, len(text) - max(3, len(items[-1]) // 2))
        text, finish = text[: max(cut, 1)], "length"
    elif not legacy and rng.random() < 0.3:
        text += (
            "\n\nLet me know if you would like more tasks!"
            if lang == "en"
            else "\n\n如需更多任务，请告诉我！"
        )
    return _limit_tokens(text, finish, max_tokens)


def _limit_tokens(text: str, finish: str, max_tokens: int) -> tuple[str, str]:
    if max_tokens and count_tokens(text) > max_tokens:
        keep = max_tokens * 4
        return text[:keep], "length"
    return text, finish


def count_tokens(text: str) -> int:
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff")
    return cjk + (len(text) - cjk) // 4 + 1


def _target_task(prompt: str) -> str:
    matches = re.findall(r"^(?:Task|任务)[:：]\s*(.+)$", prompt, re.M)
    return matches[-1].strip() if matches else ""


_CLASS_CUES = re.compile(r"classify|label it|determine whether|判断|分类为|属于", re.I)


def answer_classify(prompt: str, lang: str) -> str:
    task = _target_task(prompt)
    yes = bool(_CLASS_CUES.search(task))
    rng = _rng("classify", prompt)
    if lang == "zh":
        return rng.choice(["是", "是的"]) if yes else rng.choice(["否", "不是"])
    return rng.choice(["Yes", " Yes.", "yes"]) if yes else rng.choice(["No", " No.", "no"])


def _sentence(lang: str, rng: random.Random, *parts: str) -> str:
    topic = rng.choice(LISTS[lang]["topic"])
    audience = rng.choice(LISTS[lang]["audience"])
    if lang == "zh":
        return f"关于{topic}，{audience}最关心的是{''.join(parts)}的实际影响和长期变化。"
    return f"A note on {topic} written for {audience}, touching on {' '.join(parts)} and its wider effects."


def answer_input_first(prompt: str, lang: str) -> tuple[str, str]:
    task = _target_task(prompt)
    rng = _rng("input_first", prompt)
    needs_input = bool(re.search(r"given|following|below|下面|给定", task, re.I))
    inp_label, out_label = ("Input:", "Output:") if lang == "en" else ("输入：", "输出：")
    if not needs_input:
        return f"{out_label} {_answer_text(task, lang, rng, words=40)}", "stop"
    blocks = []
    for n in range(1, rng.randint(2, 4) + 1):
        inp = _sentence(lang, rng, str(n))
        out = _answer_text(task + inp, lang, rng, words=25)
        roll = rng.random()
        if roll < 0.05:
            out = inp
        elif roll < 0.09:
            out = "Here is the result:" if lang == "en" else "结果如下："
        header = f"Example {n}" if lang == "en" else f"示例 {n}"
        blocks.append(f"{header}\n{inp_label} {inp}\n{out_label} {out}")
    text = "\n".join(blocks)
    if rng.random() < 0.2:
        text += (
            "\n\nTask: " + compose_instruction(lang, rng)
            if lang == "en"
            else "\n\n任务：" + compose_instruction(lang, rng)
        )
    return text, "stop"


def _labels_of(task: str, lang: str) -> list[str]:
    if lang == "zh":
        match = re.search(r"(?:属于|分类为)(.+?)。?$", task)
        if match:
            return [p for p in re.split(r"、|或", match.group(1)) if p]
        return ["是", "否"]
    match = re.search(r"\b(?:as|is)\s+(.+?)\.?$", task)
    if match and (" or " in match.group(1)):
        return [p.strip().capitalize() for p in re.split(r",|\bor\b", match.group(1)) if p.strip()]
    return ["Yes", "No"]


def answer_output_first(prompt: str, lang: str) -> tuple[str, str]:
    task = _target_task(prompt)
    rng = _rng("output_first", prompt)
    labels = _labels_of(task, lang)
    head, lab, inp = (
        ("Class labels:", "Class label:", "Input:")
        if lang == "en"
        else ("类别标签：", "类别标签：", "输入：")
    )
    sep = ", " if lang == "en" else "，"
    lines = [f"{head} {sep.join(labels)}"]
    # Teachers favour the first class: more examples for it, which output-first balancing corrects.
    for n, label in enumerate(labels):
        for k in range(3 if n == 0 else rng.randint(1, 2)):
            lines.append(f"{lab} {label}")
            lines.append(f"{inp} {_sentence(lang, rng, label, str(k))}")
    return "\n".join(lines), "stop"


_EVOL_GIVEN = re.compile(
    r"#(?:Given Prompt|给定提示)#[:：]\s*\n(.*?)\n#(?:Rewritten Prompt|Created Prompt|改写提示|新提示)#", re.S
)


def answer_evol(prompt: str, lang: str) -> str:
    match = _EVOL_GIVEN.search(prompt)
    given = match.group(1).strip() if match else ""
    rng = _rng("evol", prompt)
    roll = rng.random()
    if roll < 0.12:
        return given  # no information gain
    if roll < 0.2:
        return ("#Rewritten Prompt#: " if lang == "en" else "#改写提示#：") + given
    topic = rng.choice(LISTS[lang]["topic"])
    audience = rng.choice(LISTS[lang]["audience"])
    if "#Created Prompt#" in prompt or "#新提示#" in prompt:
        return compose_instruction(lang, _rng("breadth", prompt))
    if lang == "zh":
        return f"{given}另外，请结合{topic}举出两个具体例子，并说明这些例子如何帮助{audience}理解其中的关键步骤。"
    return (
        f"{given} Additionally, include two concrete examples drawn from {topic} and explain "
        f"how each one helps {audience} follow the key steps."
    )


def answer_equal(prompt: str, lang: str) -> str:
    match = re.search(
        r"(?:The First Prompt:|第一条提示：)\s*\n(.*?)\n(?:The Second Prompt:|第二条提示：)\s*\n(.*?)\n",
        prompt,
        re.S,
    )
    if not match:
        return "Not Equal"

    def norm(text: str) -> str:
        return re.sub(r"[\W_]+", "", text.lower())

    same = norm(match.group(1)) == norm(match.group(2))
    if lang == "zh":
        return "相等" if same else "不相等"
    return (
        _rng("eq", prompt).choice(["Equal", "Equal."])
        if same
        else _rng("eq", prompt).choice(["Not Equal", "not equal."])
    )


def _answer_text(prompt: str, lang: str, rng: random.Random, *, words: int) -> str:
    parts: list[str] = []
    pool = LISTS[lang]["topic"]
    if lang == "zh":
        patterns = [
            "首先要理解{a}的基本原理。",
            "{a}与{b}之间存在不少有趣的联系。",
            "对{c}来说，最实用的做法是从身边的小事做起。",
            "举例来说，{a}在过去十年里发生了明显变化。",
            "此外，还应注意{b}可能带来的长期影响。",
            "总的来看，这个问题没有唯一答案，需要结合具体情况判断。",
            "有研究表明，{a}和{b}会相互促进。",
            "建议先收集资料，再逐步整理出自己的观点。",
        ]
        rng.shuffle(patterns)
        audiences = LISTS[lang]["audience"]
        for pattern in patterns:
            if len("".join(parts)) >= words * 2:
                break
            parts.append(pattern.format(a=rng.choice(pool), b=rng.choice(pool), c=rng.choice(audiences)))
        return "".join(parts)
    connectors = ["First", "Next", "In addition", "Finally", "For example", "As a result", "In practice"]
    while sum(len(p.split()) for p in parts) < words:
        parts.append(
            f"{rng.choice(connectors)}, consider how {rng.choice(pool)} relates to {rng.choice(pool)} "
            f"and why that matters for {rng.choice(LISTS[lang]['audience'])}."
        )
    return " ".join(parts)


def answer_generic(prompt: str, lang: str) -> str:
    rng = _rng("answer", prompt)
    roll = rng.random()
    if roll < 0.08:
        return SORRY[lang]
    if roll < 0.13:
        return STOP_ANSWER[lang]
    return _answer_text(prompt, lang, rng, words=rng.randint(90, 160))


def _bt_section(prompt: str, start: tuple[str, ...], end: tuple[str, ...]) -> str:
    """The text between a template's labels (the passage, the instruction) in a backtranslation prompt."""
    for a in start:
        if a in prompt:
            rest = prompt.split(a, 1)[1]
            for b in end:
                if b in rest:
                    rest = rest.split(b, 1)[0]
            return rest.strip()
    return ""


def answer_backtranslate_instruction(prompt: str, lang: str) -> str:
    """An instruction for the passage, wrapped as real teachers wrap it (a label, quotes, chatter)."""
    rng = _rng("bt-instruction", prompt)
    passage = _bt_section(prompt, ("Passage:\n", "文字：\n"), ("\n\nReply with", "\n\n只回复"))
    if lang == "zh":
        instruction = f"请详细介绍：{passage[:18].strip()}"
    else:
        instruction = "Explain the following in detail: " + " ".join(passage.split()[:8])
    style = rng.choice(["plain", "plain", "label", "quoted", "chatter", "empty"])
    if style == "label":
        return f"Instruction: {instruction}" if lang == "en" else f"指令：{instruction}"
    if style == "quoted":
        return f'"{instruction}"'
    if style == "chatter":
        return (
            f"Here is the instruction:\n\n{instruction}" if lang == "en" else f"指令如下：\n\n{instruction}"
        )
    if style == "empty":
        return "" if rng.random() < 0.5 else "```\n```"
    return instruction


def answer_backtranslate_score(prompt: str) -> str:
    """A 1-5 score for an (instruction, passage) pair in the formats judges write, sometimes unreadable."""
    rng = _rng("bt-score", prompt)
    score = rng.choice([2, 3, 4, 4, 5, 5])
    why = "The answer addresses the instruction from an assistant's perspective."
    style = rng.choice(["json", "json", "score", "slash5", "garbage"])
    if style == "json":
        return json.dumps({"score": score, "rationale": why})
    if style == "score":
        return f"Score: {score}\nRationale: {why}"
    if style == "slash5":
        return f"{score}/5 - {why}"
    return "The pair looks reasonable overall."


def answer_judge(prompt: str, *, retry: bool) -> str:
    rng = _rng("judge", prompt)
    score = rng.choice([2, 3, 4, 4, 5, 5])
    why = "The response follows the instruction and is mostly accurate."
    if retry:
        return json.dumps({"score": score, "rationale": why}) if rng.random() < 0.7 else "I cannot decide."
    style = rng.choice(["json", "score", "slash5", "slash10", "bold", "garbage"])
    if style == "json":
        return "```json\n" + json.dumps({"score": score, "rationale": why}) + "\n```"
    if style == "score":
        return f"Score: {score}\nRationale: {why}"
    if style == "slash5":
        return f"{score}/5 - {why}"
    if style == "slash10":
        return f"I would rate this {score * 2 - 0.5}/10. {why}"
    if style == "bold":
        return f"**Score**: {score}\n\n{why}"
    return "The answer is fine overall, though it could be more specific."


# --------------------------------------------------------------------------------------------------
# Evaluation judges: pairwise verdicts and 1-10 ratings

JUDGE_MODES = ("longer", "first", "reference", "marker")
_EVAL_MARKERS = {
    "answer_a": (
        ("[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]"),
        ("[助手A的回答开始]", "[助手A的回答结束]"),
    ),
    "answer_b": (
        ("[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]"),
        ("[助手B的回答开始]", "[助手B的回答结束]"),
    ),
    "answer": (
        ("[The Start of Assistant's Answer]", "[The End of Assistant's Answer]"),
        ("[助手的回答开始]", "[助手的回答结束]"),
    ),
    "reference": (
        ("[The Start of Reference Answer]", "[The End of Reference Answer]"),
        ("[参考答案开始]", "[参考答案结束]"),
    ),
}


def _eval_section(prompt: str, name: str) -> str | None:
    for start, end in _EVAL_MARKERS[name]:
        begin = prompt.find(start)
        if begin >= 0:
            stop = prompt.find(end, begin)
            return prompt[begin + len(start) : stop if stop >= 0 else None].strip()
    return None


def _same_text(a: str | None, b: str | None) -> bool:
    return (
        a is not None and b is not None and re.sub(r"\s+", " ", a).strip() == re.sub(r"\s+", " ", b).strip()
    )


def _pick(a: bool, b: bool) -> str:
    return "A" if a and not b else "B" if b and not a else "C"


def answer_pairwise(prompt: str, lang: str, *, retry: bool, mode: str, marker: str) -> str:
    a = _eval_section(prompt, "answer_a") or ""
    b = _eval_section(prompt, "answer_b") or ""
    if mode == "first":
        choice = "A"
    elif mode == "reference":
        reference = _eval_section(prompt, "reference")
        choice = _pick(_same_text(a, reference), _same_text(b, reference))
    elif mode == "marker":
        choice = _pick(bool(marker) and marker in a, bool(marker) and marker in b)
    else:
        la, lb = count_tokens(a), count_tokens(b)
        choice = _pick(la > lb, lb > la)
    if retry:
        return f"[[{choice}]]"
    if lang == "zh":
        why = {"A": "助手A的回答更贴合问题。", "B": "助手B的回答更准确、更完整。", "C": "两个回答不相上下。"}[
            choice
        ]
        style = _rng("pairwise-style", prompt).choice(["bracket", "json", "verdict"])
        if style == "json":
            return json.dumps(
                {"winner": "tie" if choice == "C" else choice, "rationale": why}, ensure_ascii=False
            )
        if style == "verdict":
            return f"{why}\n最终裁决：[[{choice}]]"
        return f"{why}\n\n[[{choice}]]"
    why = {
        "A": "Assistant A addresses the question more directly.",
        "B": "Assistant B is more accurate and complete.",
        "C": "Both answers are of similar quality.",
    }[choice]
    style = _rng("pairwise-style", prompt).choice(["bracket", "json", "verdict", "bold"])
    if style == "json":
        return (
            "```json\n"
            + json.dumps({"winner": "tie" if choice == "C" else choice, "rationale": why})
            + "\n```"
        )
    if style == "verdict":
        return f"{why}\n\nFinal verdict: " + ("tie" if choice == "C" else f"Assistant {choice}")
    if style == "bold":
        return f"**[[{choice}]]**\n\n{why}"
    return f"{why}\n\n[[{choice}]]"


def answer_single(prompt: str, lang: str, *, retry: bool, mode: str, marker: str) -> str:
    answer = _eval_section(prompt, "answer") or ""
    if mode == "reference":
        reference = _eval_section(prompt, "reference")
        rating = 5 if reference is None else 9 if _same_text(answer, reference) else 2
    elif mode == "marker":
        rating = 9 if marker and marker in answer else 3
    else:
        rating = max(1, min(10, 2 + count_tokens(answer) // 25))
    if retry:
        return f"[[{rating}]]"
    if lang == "zh":
        return f"回答基本切题。\n评分：[[{rating}]]"
    style = _rng("single-style", prompt).choice(["bracket", "json", "slash"])
    why = "The answer is relevant and mostly accurate."
    if style == "json":
        return json.dumps({"rating": rating, "rationale": why})
    if style == "slash":
        return f"{rating}/10 - {why}"
    return f"{why}\nRating: [[{rating}]]"


def answer_aspects(prompt: str) -> str:
    """UltraFeedback-style aspect ratings (app/pipeline/prompts/*/aspects.txt) of the response shown: longer
    answers rate higher on helpfulness and instruction following, as real judges lean; a re-ask (the
    previous reply is in the prompt) gets the bare JSON line."""
    answer = ""
    for start, end in (
        ("[The Start of the Response]", "[The End of the Response]"),
        ("[回答开始]", "[回答结束]"),
    ):
        if start in prompt:
            answer = prompt.split(start, 1)[1].split(end, 1)[0].strip()
            break
    level = max(1, min(5, 1 + count_tokens(answer) // 40))
    scores = {"helpfulness": level, "honesty": 4, "instruction_following": level, "harmlessness": 5}
    line = json.dumps(scores)
    if "had no ratings in the required format" in prompt or "没有给出符合格式的四项评分" in prompt:
        return line
    why = "The response is relevant; its detail decides how helpful it is."
    return f"{why}\n{line}"


def detect_kind(prompt: str) -> tuple[str, str]:
    """(prompt kind, language) from the phrases our templates use, as a real model reads the prompt."""
    zh = bool(re.search(r"[\u4e00-\u9fff]", prompt[:400]))
    lang = "zh" if zh else "en"
    checks = [
        ("aspects", ("had no ratings in the required format", "没有给出符合格式的四项评分")),
        ("aspects", ("on each of four aspects", "请从以下四个方面为下面这个回答打分")),
        ("pairwise_retry", ("had no verdict in the required format", "没有符合格式的裁决")),
        ("single_retry", ("had no rating in the required format", "没有符合格式的评分")),
        ("pairwise", ("[The Start of Assistant A's Answer]", "[助手A的回答开始]")),
        ("single", ("[The Start of Assistant's Answer]", "[助手的回答开始]")),
        ("judge_retry", ("could not be read", "无法解析")),
        ("bt_instruction", ("Write the instruction the user most likely gave", "请写出用户最可能提出的指令")),
        ("bt_score", ("Rate how well the answer answers the instruction", "请评估回答对指令的回答程度")),
        ("judge", ("Score the response", "请为回答打分")),
        ("rewrite", REWRITE_CUES),
        ("reasoning", REASONING_CUES),
        ("equal", ("The First Prompt:", "第一条提示：")),
        ("evol", ("#Given Prompt#", "#给定提示#")),
        ("classify", ("classification task with finite output labels", "有限输出标签的分类任务")),
        ("output_first", ("corresponds to each of the class labels", "为每个类别标签生成一个对应的输入")),
        ("input_first", ("Come up with examples for the following tasks", "为下面的任务编写示例")),
        ("instructions", ("Come up with a series of tasks", "请想出一系列任务")),
    ]
    for kind, phrases in checks:
        if any(p in prompt for p in phrases):
            return kind, lang
    return "answer", lang


def respond(
    prompt: str,
    *,
    legacy: bool,
    max_tokens: int,
    judge_mode: str = "longer",
    judge_marker: str = "",
    seed: int | None = None,
) -> tuple[str, str]:
    """The answer to `prompt`. A request's `seed` (sent by the respond job to sample several candidates)
    varies plain answers as sampling would; without one, answers are what they always were."""
    kind, lang = detect_kind(prompt)
    if kind in ("pairwise", "pairwise_retry"):
        text = answer_pairwise(
            prompt, lang, retry=kind == "pairwise_retry", mode=judge_mode, marker=judge_marker
        )
        return _limit_tokens(text, "stop", max_tokens)
    if kind in ("single", "single_retry"):
        text = answer_single(prompt, lang, retry=kind == "single_retry", mode=judge_mode, marker=judge_marker)
        return _limit_tokens(text, "stop", max_tokens)
    if kind == "instructions":
        return answer_instructions(prompt, lang, legacy=legacy, max_tokens=max_tokens)
    if kind == "classify":
        return answer_classify(prompt, lang), "stop"
    if kind == "input_first":
        return answer_input_first(prompt, lang)
    if kind == "output_first":
        return answer_output_first(prompt, lang)
    if kind == "evol":
        return answer_evol(prompt, lang), "stop"
    if kind == "equal":
        return answer_equal(prompt, lang), "stop"
    if kind == "bt_instruction":
        return _limit_tokens(answer_backtranslate_instruction(prompt, lang), "stop", max_tokens)
    if kind == "bt_score":
        return answer_backtranslate_score(prompt), "stop"
    if kind in ("judge", "judge_retry"):
        return answer_judge(prompt, retry=kind == "judge_retry"), "stop"
    if kind == "rewrite":
        return _limit_tokens(answer_rewrite(prompt, lang), "stop", max_tokens)
    if kind == "reasoning":
        return _limit_tokens(answer_reasoning(prompt, lang), "stop", max_tokens)
    if kind == "aspects":
        return answer_aspects(prompt), "stop"
    varied = prompt if seed is None else f"{prompt}\x00seed={seed}"
    return _limit_tokens(answer_generic(varied, lang), "stop", max_tokens)


# --------------------------------------------------------------------------------------------------
# Server


@dataclass
class FakeState:
    latency_ms: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    completions: int = 0
    by_hash: Counter[str] = field(default_factory=Counter)
    completed_by_hash: Counter[str] = field(default_factory=Counter)
    judge_mode: str = "longer"
    judge_marker: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_settings: dict[str, float] = field(
        default_factory=lambda: {"delay_s": 0.0, "fail_lines": 0, "expire_next": 0, "create_hold_s": 0.0}
    )

    def take_fault(self) -> dict[str, Any] | None:
        with self.lock:
            while self.faults:
                fault = self.faults[0]
                if fault.get("count", 1) <= 0:
                    self.faults.pop(0)
                    continue
                fault["count"] = fault.get("count", 1) - 1
                return dict(fault)
            return None

    def scripted(self, prompt: str) -> dict[str, Any] | None:
        with self.lock:
            for entry in self.responses:
                if entry["match"] in prompt and entry.get("times", 1) != 0:
                    if entry.get("times") is not None:
                        entry["times"] -= 1
                    return dict(entry)
        return None

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "completions": self.completions,
                "by_hash": dict(self.by_hash),
                "completed_by_hash": dict(self.completed_by_hash),
                "latency_ms": self.latency_ms,
                "pending_faults": [dict(f) for f in self.faults if f.get("count", 1) > 0],
                "batches_created": len(self.batches),
                "batch_requests": sum(b["request_counts"]["total"] for b in self.batches.values()),
            }

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.responses.clear()
            self.judge_mode, self.judge_marker = "longer", ""
            self.requests = self.completions = 0
            self.by_hash.clear()
            self.completed_by_hash.clear()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = {429: "rate_limit_error", 500: "server_error", 503: "server_error"}.get(
        status, "invalid_request_error"
    )
    return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status, headers=headers)


def build_app(state: FakeState) -> Starlette:
    async def completion(request: Request, *, legacy: bool) -> JSONResponse:
        body = await request.json()
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        with state.lock:
            state.requests += 1
            state.by_hash[digest] += 1
            latency = state.latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)
        fault = state.take_fault()
        if fault:
            status = int(fault.get("status", 500))
            headers: dict[str, str] = {}
            if fault.get("retry_after") is not None:
                if fault.get("retry_after_date"):
                    headers["Retry-After"] = email.utils.formatdate(
                        time.time() + float(fault["retry_after"]), usegmt=True
                    )
                else:
                    headers["Retry-After"] = str(fault["retry_after"])
            return _error(status, f"injected fault {status}", headers)
        if legacy:
            prompt = body.get("prompt", "")
            prompt = prompt if isinstance(prompt, str) else "\n".join(prompt)
        else:
            prompt = "\n\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        max_tokens = int(body.get("max_tokens") or 0)
        scripted = state.scripted(prompt)
        if scripted:
            text, finish = scripted["text"], scripted.get("finish_reason", "stop")
        else:
            with state.lock:
                mode, marker = state.judge_mode, state.judge_marker
            text, finish = respond(
                prompt,
                legacy=legacy,
                max_tokens=max_tokens,
                judge_mode=mode,
                judge_marker=marker,
                seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
            )
        usage = {
            "prompt_tokens": count_tokens(prompt),
            "completion_tokens": count_tokens(text),
            "total_tokens": count_tokens(prompt) + count_tokens(text),
        }
        with state.lock:
            state.completions += 1
            state.completed_by_hash[digest] += 1
        base = {
            "id": f"cmpl-{digest[:12]}",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "usage": usage,
        }
        if legacy:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            return JSONResponse({**base, "object": "text_completion", "choices": [choice]})
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return JSONResponse({**base, "object": "chat.completion", "choices": [choice]})

    async def chat(request: Request) -> JSONResponse:
        return await completion(request, legacy=False)

    async def legacy(request: Request) -> JSONResponse:
        return await completion(request, legacy=True)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": "fake-teacher", "object": "model", "owned_by": "tests"}]}
        )

    async def faults(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            state.faults.extend(body if isinstance(body, list) else [body])
        return JSONResponse({"ok": True})

    async def latency(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            state.latency_ms = float(body.get("ms", 0))
        return JSONResponse({"ok": True})

    async def responses(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            state.responses.extend(body if isinstance(body, list) else [body])
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(state.snapshot())

    async def judge(request: Request) -> JSONResponse:
        body = await request.json()
        mode = body.get("mode", "longer")
        if mode not in JUDGE_MODES:
            return _error(400, f"judge mode must be one of {', '.join(JUDGE_MODES)}")
        with state.lock:
            state.judge_mode, state.judge_marker = mode, str(body.get("marker", ""))
        return JSONResponse({"ok": True})

    async def reset(request: Request) -> JSONResponse:
        state.reset()
        return JSONResponse({"ok": True})

    batch_routes = _batch_routes(state)
    return Starlette(
        routes=[
            *batch_routes,
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", legacy, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/admin/faults", faults, methods=["POST"]),
            Route("/admin/latency", latency, methods=["POST"]),
            Route("/admin/responses", responses, methods=["POST"]),
            Route("/admin/stats", stats, methods=["GET"]),
            Route("/admin/judge", judge, methods=["POST"]),
            Route("/admin/reset", reset, methods=["POST"]),
        ]
    )


def _answer_body(state: FakeState, body: dict[str, Any], *, legacy: bool) -> dict[str, Any]:
    """The completion a batch line gets: the synchronous endpoint's answer to the same body."""
    if legacy:
        prompt = body.get("prompt", "")
        prompt = prompt if isinstance(prompt, str) else "\n".join(prompt)
    else:
        prompt = "\n\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    scripted = state.scripted(prompt)
    if scripted:
        text, finish = scripted["text"], scripted.get("finish_reason", "stop")
    else:
        with state.lock:
            mode, marker = state.judge_mode, state.judge_marker
        text, finish = respond(
            prompt,
            legacy=legacy,
            max_tokens=int(body.get("max_tokens") or 0),
            judge_mode=mode,
            judge_marker=marker,
            seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        )
    usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": count_tokens(text)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if legacy:
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    return {
        "object": "chat.completion",
        "model": body.get("model", "fake"),
        "choices": [choice],
        "usage": usage,
    }


def _run_batch(state: FakeState, batch: dict[str, Any]) -> None:
    """Answer a batch whose delay has passed: output and error files, as OpenAI writes them."""
    lines = [json.loads(x) for x in state.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
    answered = lines[: len(lines) // 2] if batch["_expire"] else lines
    out, err = [], []
    for n, line in enumerate(lines):
        rid = f"batch_req_{batch['id']}_{n}"
        if line not in answered:
            error = {"code": "batch_expired", "message": "This request could not be executed before expiry."}
            err.append({"id": rid, "custom_id": line["custom_id"], "response": None, "error": error})
        elif n < batch["_fail_lines"]:
            body = {"error": {"message": "injected batch line failure", "type": "server_error"}}
            response = {"status_code": 500, "request_id": rid, "body": body}
            err.append({"id": rid, "custom_id": line["custom_id"], "response": response, "error": None})
        else:
            answer = _answer_body(state, line["body"], legacy=line["url"].endswith("/v1/completions"))
            response = {"status_code": 200, "request_id": rid, "body": answer}
            out.append({"id": rid, "custom_id": line["custom_id"], "response": response, "error": None})
    with state.lock:
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{batch['id']}-{name[:3]}"
                state.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["status"] = "expired" if batch["_expire"] else "completed"
        batch["request_counts"].update(completed=len(out), failed=len(err))
        batch["completed_at"] = int(time.time())


def _batch_routes(state: FakeState) -> list[Route]:
    def public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def upload(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form.get("file")
        if form.get("purpose") != "batch" or upload is None or isinstance(upload, str):
            return _error(400, "a file with purpose 'batch' is required")
        data = await upload.read()
        with state.lock:
            file_id = f"file-{len(state.files) + 1}"
            state.files[file_id] = data
        return JSONResponse(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": upload.filename or "batch.jsonl",
                "purpose": "batch",
                "status": "processed",
            }
        )

    async def content(request: Request) -> Response:
        data = state.files.get(request.path_params["file_id"])
        if data is None:
            return _error(404, "no such file")
        return Response(data, media_type="application/octet-stream")

    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("input_file_id") not in state.files:
            return _error(400, "input_file_id not found")
        lines = [x for x in state.files[body["input_file_id"]].decode().splitlines() if x.strip()]
        with state.lock:
            settings = state.batch_settings
            batch_id = f"batch_{len(state.batches) + 1}"
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body.get("endpoint", "/v1/chat/completions"),
                "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window", "24h"),
                "status": "in_progress",
                "created_at": int(time.time()),
                "output_file_id": None,
                "error_file_id": None,
                "errors": None,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": body.get("metadata") or {},
                "_ready_at": time.monotonic() + settings["delay_s"],
                "_fail_lines": int(settings["fail_lines"]),
                "_expire": settings["expire_next"] > 0,
            }
            settings["fail_lines"] = 0
            settings["expire_next"] = max(0, settings["expire_next"] - 1)
            state.batches[batch_id] = batch
            hold = settings["create_hold_s"]
        if hold:
            await asyncio.sleep(hold)
        return JSONResponse(public(batch))

    def advanced(batch_id: str) -> dict[str, Any] | None:
        batch = state.batches.get(batch_id)
        if batch is not None and batch["status"] == "in_progress" and time.monotonic() >= batch["_ready_at"]:
            _run_batch(state, batch)
        return batch

    async def retrieve(request: Request) -> JSONResponse:
        batch = advanced(request.path_params["batch_id"])
        return JSONResponse(public(batch)) if batch else _error(404, "no such batch")

    async def listing(request: Request) -> JSONResponse:
        data = [public(b) for b in reversed(list(state.batches.values()))]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def cancel(request: Request) -> JSONResponse:
        batch = state.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        with state.lock:
            if batch["status"] == "in_progress":
                batch["status"] = "cancelled"
        return JSONResponse(public(batch))

    async def settings(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            state.batch_settings.update({k: float(v) for k, v in body.items() if k in state.batch_settings})
        return JSONResponse({"ok": True})

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
        Route("/v1/batches", create, methods=["POST"]),
        Route("/v1/batches", listing, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
        Route("/admin/batches", settings, methods=["POST"]),
    ]


def load_script(state: FakeState, path: str | Path) -> None:
    script = json.loads(Path(path).read_text(encoding="utf-8"))
    state.latency_ms = float(script.get("latency_ms", state.latency_ms))
    state.faults.extend(script.get("faults", []))
    state.responses.extend(script.get("responses", []))
    if script.get("judge"):
        state.judge_mode = script["judge"].get("mode", state.judge_mode)
        state.judge_marker = str(script["judge"].get("marker", state.judge_marker))


class FakeTeacher:
    """A running fake teacher; use :meth:`start` as a context manager."""

    def __init__(self, state: FakeState, port: int) -> None:
        self.state = state
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, *, latency_ms: float = 0.0, script: str | Path | None = None, port: int = 0
    ) -> Iterator[FakeTeacher]:
        state = FakeState(latency_ms=latency_ms)
        if script:
            load_script(state, script)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        config = uvicorn.Config(build_app(state), log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("fake teacher did not start")
            time.sleep(0.01)
        try:
            yield cls(state, sock.getsockname()[1])
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot()

    def fault(
        self, status: int, *, count: int = 1, retry_after: float | None = None, date: bool = False
    ) -> None:
        with self.state.lock:
            self.state.faults.append(
                {"status": status, "count": count, "retry_after": retry_after, "retry_after_date": date}
            )

    def set_latency(self, ms: float) -> None:
        with self.state.lock:
            self.state.latency_ms = ms

    def script_response(
        self, match: str, text: str, *, finish_reason: str = "stop", times: int | None = None
    ) -> None:
        with self.state.lock:
            self.state.responses.append(
                {"match": match, "text": text, "finish_reason": finish_reason, "times": times}
            )

    def set_judge(self, mode: str, *, marker: str = "") -> None:
        """How evaluation judges decide from now on (see the module docstring); ``reset`` restores ``longer``."""
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode must be one of {', '.join(JUDGE_MODES)}")
        with self.state.lock:
            self.state.judge_mode, self.state.judge_marker = mode, marker

    def reset(self) -> None:
        self.state.reset()

    def set_batches(self, **settings: float) -> None:
        """Batch API behaviour from now on: ``delay_s``, ``fail_lines``, ``expire_next``, ``create_hold_s``."""
        with self.state.lock:
            self.state.batch_settings.update(settings)


@contextlib.contextmanager
def teacher_process(*, latency_ms: float = 0.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The fake teacher in a process of its own, for benchmarks: its CPU and GIL are not the caller's.

    Yields its base URL (ending in ``/v1``) and the process; stops it on exit.
    """
    from tests.procs import free_port, kill

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_teacher", "--port", str(port), "--latency-ms", str(latency_ms)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                kill(proc)
                raise RuntimeError("fake teacher did not start") from None
            time.sleep(0.1)
    try:
        yield url, proc
    finally:
        kill(proc)


def teacher_for(fake: FakeTeacher, **overrides: Any) -> Any:
    """A TeacherConfig pointing at ``fake`` with test-friendly retry timings."""
    from app.pipeline.llm import TeacherConfig

    values: dict[str, Any] = {
        "name": "fake",
        "base_url": fake.base_url,
        "model": "fake-teacher",
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 10.0,
    }
    values.update(overrides)
    return TeacherConfig(**values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible teacher for tests and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--script", default=None)
    args = parser.parse_args(argv)
    state = FakeState(latency_ms=args.latency_ms)
    if args.script:
        load_script(state, args.script)
    print(f"fake teacher on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(build_app(state), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
