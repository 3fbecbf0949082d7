"""Language identification for instruction data: what language a short text is written in, or "unknown".

Three steps, each for a reason measured on real data (docs/curation.md, "Language"):

1. **Language-neutral text is set aside** (:func:`prose`): fenced and inline code, lines of code (SQL, Python,
   shell...), URLs, e-mail addresses, LaTeX, table rows, and every token holding a digit or a code/math
   symbol. "x = 3, y = 2", a FEN position or a SQL query are in no language; a stop-word count called the
   first "es". What is left must have ``MIN_LETTERS`` letters, or the text is "unknown".
2. **Scripts decide what they can**: kana means Japanese, hangul Korean, Han characters Chinese, Cyrillic
   Russian, and so on. Text that mixes Chinese with Latin words ("翻译以下句子：I will always remember...")
   is Chinese when Chinese characters make a fifth of its units (a Han character or a Latin word each
   count one), after quoted passages are set aside: the frame of the text, not what it quotes, is its
   language.
3. **Latin-script text goes to py3langid** (a naive Bayes model over byte n-grams, shipped in its wheel),
   restricted to the Latin-script languages of ``LATIN_LANGUAGES``. The old stop-word count called 4 % of
   real English instructions Portuguese ("Write a knock knock joke about bananas." has the "a" of pt);
   py3langid gets 99.7 % of them right at about 45 µs a call (bench/langid.py).

:func:`identify` returns a :class:`Guess` with a confidence (py3langid's calibrated probability, or the
winning script's share) and the letter count it rests on, so that rules can act only on clear cases.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Latin-script languages py3langid chooses among. Every language added makes short English text more
# likely to be taken for it; these are the Latin-script languages instruction data is commonly in.
LATIN_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "vi", "id", "sv")
MIN_LETTERS = 3
# Quoted passages are set aside when the rest of the text has this many letters ("Translate '你好' into
# English" is English; "The following review expresses what sentiment? '...'" is too).
MIN_FRAME_LETTERS = 8
# Cost grows with the text; a guess does not change after a few hundred characters of prose.
MAX_CHARS = 600  # passed to py3langid
MAX_SCAN = 3000  # read for prose

_SCRIPTS = {
    "kana": re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]"),
    "hangul": re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]"),
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]"),
    "latin": re.compile(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
}
_SCRIPT_LANG = {
    "cyrillic": "ru",
    "arabic": "ar",
    "greek": "el",
    "hebrew": "he",
    "devanagari": "hi",
    "thai": "th",
}
_CJK_SCRIPT = {"zh": "han", "ja": "kana", "ko": "hangul"}
# A Chinese text's share of CJK units above which it is Chinese (see step 2 above). A Chinese frame
# around an English passage scores 0.2-0.5; an English sentence naming one Chinese word stays under.
CJK_SHARE = 0.2

# Language-neutral content (step 1).
_FENCED = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b[\w.+-]+@[\w-]+\.[\w.-]+")
_LATEX = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_CODE_START = re.compile(
    r"^\s*(?:def |class |import |from \S+ import|return\b|if\s*\(|for\s*\(|while\s*\(|elif |else:|try:|except\b"
    r"|#include|#!|public |private |static |function\b|var |let |const |console\.|print\(|printf|echo |System\."
    r"|SELECT |INSERT |UPDATE |DELETE |CREATE |ALTER |DROP |WITH |FROM |WHERE |GROUP BY|ORDER BY|JOIN |<\w+[ >/])"
)
_BLOCK_OPENER = re.compile(r"(?:if|elif|else|for|while|with|try|except|finally|def|class)\b")
_CODE_CHARS = re.compile(r"[{}\[\]()<>=;_#$%^&*/\\|+~`@]")
# A token with a digit or a code/math symbol carries no language ("e4", "x^2", "a_b", "f(x)", "3:45").
# CJK characters and full-width punctuation end a token: a Chinese sentence has no spaces.
_CJK_OR_SPACE = "\\s\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_NEUTRAL_TOKEN = re.compile(
    rf"[^{_CJK_OR_SPACE}]*(?:[0-9{{}}\[\]()<>=;_#$%^&*/\\|+~`@]|[^\W\d_]\.[^\W\d_])[^{_CJK_OR_SPACE}]*"
)  # ... and so does "root.next"
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_QUOTED = re.compile(
    r"\"[^\"\n]{2,}\"|“[^”]{2,}”|「[^」]{2,}」|『[^』]{2,}』|‘[^’]{2,}’|(?<!\w)'[^'\n]{2,}'(?!\w)"
)
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]{2,}")
_OTHER_WORD = re.compile(r"[\u0370-\u03ff\u0400-\u04ff\u0590-\u05ff\u0600-\u06ff\u0750-\u077f\u0900-\u097f]+")


def _code_line(line: str) -> bool:
    stripped = line.strip()
    if not stripped:
        return False
    if _CODE_START.match(stripped) or stripped.endswith((";", "{", "}")) or stripped.startswith((":", "@")):
        return True
    if stripped.endswith(":") and _BLOCK_OPENER.match(stripped):  # "while l1 or l2 or carry:"
        return True
    if stripped.count("|") >= 2:  # a table row
        return True
    if len(_CJK_CHAR.findall(stripped)) >= 4:  # Chinese prose with a formula in it
        return False
    # Dense in symbols and with few plain words; "Given that f(x) = 5x^3 - 2x + 3, find the value of
    # f(2)." is a sentence (its formula goes with the neutral tokens).
    symbols = len(_CODE_CHARS.findall(stripped))
    plain = sum(1 for token in stripped.split() if len(token) > 1 and token.isalpha())
    return symbols >= 3 and symbols / len(stripped) > 0.08 and plain < 5


def prose(text: str) -> str:
    """The text without its language-neutral parts: code, math, URLs, tables, numbers."""
    # NFKC: BELLE's code is indented with no-break spaces, and machine-translated code has "divmod（a，b）".
    text = unicodedata.normalize("NFKC", text)
    text = _FENCED.sub(" ", text)
    text = _INLINE_CODE.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _LATEX.sub(" ", text)
    lines = [line for line in text.splitlines() if not _code_line(line)]
    return _NEUTRAL_TOKEN.sub(" ", "\n".join(lines))


@dataclass(frozen=True)
class Guess:
    language: str
    """ISO 639-1 code ('en', 'zh', 'ja', 'ko', 'de', 'fr', ...) or 'unknown'."""
    confidence: float
    """py3langid's probability for Latin text; for CJK text its share of units over 0.4, capped at 1."""
    letters: int
    """Letters (CJK characters included) of natural-language text the guess rests on."""


UNKNOWN = Guess("unknown", 0.0, 0)


class _Latin:
    """py3langid, loaded on first use (about 1 s and 60 MB), restricted to ``LATIN_LANGUAGES``."""

    _lock = threading.Lock()
    _identifier: Any = None

    @classmethod
    def classify(cls, text: str) -> tuple[str, float]:
        if cls._identifier is None:
            with cls._lock:
                if cls._identifier is None:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                    identifier.set_languages(list(LATIN_LANGUAGES))
                    cls._identifier = identifier
        lang, prob = cls._identifier.classify(text[:MAX_CHARS])
        return str(lang), float(prob)


def _counts(text: str) -> dict[str, int]:
    if text.isascii():  # only the Latin script can occur (most English text takes this path)
        n = len(_SCRIPTS["latin"].findall(text))
        return {"latin": n} if n else {}
    return {name: n for name, pattern in _SCRIPTS.items() if (n := len(pattern.findall(text)))}


@lru_cache(maxsize=1024)  # the two language rules ask for the same instruction's language
def identify(text: str) -> Guess:
    """The language ``text`` is written in, with how sure the guess is (see the module docstring)."""
    body = prose(text[:MAX_SCAN])
    counts = _counts(body)
    letters = sum(counts.values())
    # A CJK character weighs about a word: "疼痛" (pain) is an answer in Chinese.
    if letters + counts.get("han", 0) + counts.get("kana", 0) + counts.get("hangul", 0) < MIN_LETTERS:
        return UNKNOWN
    frame = _QUOTED.sub(" ", body)
    if frame != body:  # what a text quotes is not its language; its frame is, when there is one
        frame_counts = _counts(frame)
        if sum(frame_counts.values()) >= MIN_FRAME_LETTERS:
            body, counts = frame, frame_counts
    cjk = counts.get("han", 0) + counts.get("kana", 0) + counts.get("hangul", 0)
    if cjk:  # a mix of CJK and other scripts is decided by its share of CJK units
        words = len(_LATIN_WORD.findall(body)) + len(_OTHER_WORD.findall(body))
        share = cjk / (cjk + words) if cjk + words else 0.0
        if share >= CJK_SHARE:
            if counts.get("kana", 0) >= 2:
                lang = "ja"
            elif counts.get("hangul", 0) > counts.get("han", 0):
                lang = "ko"
            else:
                lang = "zh"
            return Guess(lang, min(1.0, share / (2 * CJK_SHARE)), letters)
    main = max((s for s in counts if s not in ("han", "kana", "hangul")), key=lambda s: counts[s], default="")
    if main in _SCRIPT_LANG:
        return Guess(_SCRIPT_LANG[main], counts[main] / letters, letters)
    if main != "latin":
        return UNKNOWN
    lang, prob = _Latin.classify(" ".join(body.split()))
    return Guess(lang, prob, letters)


def detect_language(text: str) -> str:
    """'zh', 'ja', 'ko', 'en', 'de', 'fr', 'es', 'it', 'pt', 'ru', 'ar', … or 'unknown'."""
    return identify(text).language


def script_letters(text: str, language: str) -> int:
    """How many characters of ``language``'s own script ``text`` has (CJK languages only, else 0)."""
    script = _CJK_SCRIPT.get(language)
    if script is None:
        return 0
    n = len(_SCRIPTS[script].findall(text))
    return n + len(_SCRIPTS["han"].findall(text)) if language == "ja" else n


# Names of languages as instructions write them, to understand "translate into Chinese", "用英文回答".
LANGUAGE_NAMES: dict[str, tuple[str, ...]] = {
    "en": ("english", "英语", "英文", "英译", "译英", "英汉", "汉英", "中英", "英中"),
    "zh": ("chinese", "mandarin", "cantonese", "中文", "汉语", "漢語", "普通话", "简体", "繁体", "国语",
           "中译", "译中", "汉译", "英汉", "汉英", "中英", "英中", "文言", "古文", "pinyin", "拼音"),
    "ja": ("japanese", "日语", "日文", "日本語", "日译"),
    "ko": ("korean", "韩语", "韩文", "朝鲜语", "한국어"),
    "de": ("german", "deutsch", "德语", "德文"),
    "fr": ("french", "français", "francais", "法语", "法文"),
    "es": ("spanish", "español", "espanol", "西班牙语", "西班牙文"),
    "it": ("italian", "italiano", "意大利语", "意大利文"),
    "pt": ("portuguese", "português", "葡萄牙语", "葡萄牙文"),
    "nl": ("dutch", "荷兰语"),
    "ru": ("russian", "俄语", "俄文"),
    "ar": ("arabic", "阿拉伯语"),
    "el": ("greek", "希腊语"),
    "he": ("hebrew", "希伯来语"),
    "hi": ("hindi", "印地语"),
    "th": ("thai", "泰语"),
    "vi": ("vietnamese", "越南语"),
    "tr": ("turkish", "土耳其语"),
    "pl": ("polish", "波兰语"),
    "sv": ("swedish", "瑞典语"),
    "id": ("indonesian", "印尼语", "印度尼西亚语"),
}  # fmt: skip
_NAME_PATTERNS = {
    lang: re.compile("|".join(rf"\b{re.escape(n)}\b" if n.isascii() else re.escape(n) for n in names))
    for lang, names in LANGUAGE_NAMES.items()
}
_TRANSLATE = re.compile(
    r"\btranslat|\btransliterat|\binterpret\b|\bin (?:another|other|a different|different) languages?\b"
    r"|\bmeans? in\b|翻译|译成|译为|译文|翻成|转成.{0,4}[文语]|用.{0,4}[文语].{0,4}(?:写|说|回答|表达|输出)",
    re.IGNORECASE,
)


def named_languages(text: str) -> frozenset[str]:
    """The languages an instruction names ("into Chinese", "用英文回答", "a French poem")."""
    lower = text.lower()
    return frozenset(lang for lang, pattern in _NAME_PATTERNS.items() if pattern.search(lower))


def asks_to_translate(text: str) -> bool:
    """Whether an instruction asks for a translation (or otherwise for text in some other language)."""
    return bool(_TRANSLATE.search(text))
