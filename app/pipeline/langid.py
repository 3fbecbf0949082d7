"""A small script- and stop-word-based language guess, good enough to catch an answer in the wrong language."""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# The most frequent function words of the Latin-script languages we tell apart.
_STOPWORDS = {
    "en": {
        "the",
        "and",
        "of",
        "to",
        "is",
        "in",
        "that",
        "it",
        "for",
        "you",
        "what",
        "with",
        "are",
        "this",
        "how",
    },
    "de": {
        "der",
        "die",
        "und",
        "das",
        "ist",
        "nicht",
        "ein",
        "eine",
        "zu",
        "ich",
        "sie",
        "mit",
        "was",
        "wie",
        "den",
    },
    "fr": {
        "le",
        "la",
        "les",
        "et",
        "est",
        "un",
        "une",
        "des",
        "que",
        "pas",
        "pour",
        "vous",
        "du",
        "dans",
        "qui",
    },
    "es": {
        "el",
        "la",
        "los",
        "las",
        "y",
        "es",
        "un",
        "una",
        "que",
        "de",
        "para",
        "por",
        "con",
        "qué",
        "cómo",
    },
    "it": {"il", "la", "di", "che", "è", "e", "un", "una", "per", "non", "sono", "con", "come", "del", "gli"},
    "pt": {"o", "a", "os", "as", "e", "é", "um", "uma", "que", "de", "para", "não", "com", "do", "como"},
}


# One character class per script, counted by the regex engine (a Python loop per character was the
# hot spot of rule checking during generation).
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


# word -> the languages it is a stop word of: one pass over the words scores every language.
_STOP_LANGS: dict[str, tuple[str, ...]] = {}
for _lang, _words in _STOPWORDS.items():
    for _word in _words:
        _STOP_LANGS[_word] = (*_STOP_LANGS.get(_word, ()), _lang)


def _latin_language(text: str) -> str:
    scores = dict.fromkeys(_STOPWORDS, 0)
    for word in _WORD.findall(text):
        for lang in _STOP_LANGS.get(word.lower(), ()):
            scores[lang] += 1
    best = max(scores, key=lambda lang: scores[lang])
    # Short or code-like text with no function words is most likely English in instruction data.
    return best if scores[best] > scores["en"] else "en"


def detect_language(text: str) -> str:
    """'zh', 'ja', 'ko', 'en', 'de', 'fr', 'es', 'it', 'pt', 'ru', 'ar', … or 'unknown'."""
    if text.isascii():
        # Only the Latin script can occur: skip counting the others (most English text takes this path).
        return _latin_language(text) if _SCRIPTS["latin"].search(text) else "unknown"
    counts = {name: n for name, pattern in _SCRIPTS.items() if (n := len(pattern.findall(text)))}
    if not counts:
        return "unknown"
    total = sum(counts.values())
    if counts.get("kana", 0) >= 2:
        return "ja"
    if counts.get("hangul", 0) / total > 0.3:
        return "ko"
    # Chinese characters are dense: a few among Latin words (code, names) already mean Chinese text.
    if counts.get("han", 0) / total > 0.2:
        return "zh"
    main = max(counts, key=lambda s: counts[s])
    if main in _SCRIPT_LANG:
        return _SCRIPT_LANG[main]
    if main != "latin":
        return "unknown"
    return _latin_language(text)
