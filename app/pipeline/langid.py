"""A small script- and stop-word-based language guess, good enough to catch an answer in the wrong language."""

from __future__ import annotations

import re
import unicodedata

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


def _script(ch: str) -> str | None:
    cp = ord(ch)
    if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF:
        return "kana"
    if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
        return "hangul"
    if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F:
        return "han"
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    for script in ("LATIN", "CYRILLIC", "ARABIC", "GREEK", "HEBREW", "DEVANAGARI", "THAI"):
        if name.startswith(script):
            return script.lower()
    return "other"


_SCRIPT_LANG = {
    "cyrillic": "ru",
    "arabic": "ar",
    "greek": "el",
    "hebrew": "he",
    "devanagari": "hi",
    "thai": "th",
}


def detect_language(text: str) -> str:
    """'zh', 'ja', 'ko', 'en', 'de', 'fr', 'es', 'it', 'pt', 'ru', 'ar', … or 'unknown'."""
    counts: dict[str, int] = {}
    for ch in text:
        script = _script(ch)
        if script:
            counts[script] = counts.get(script, 0) + 1
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
    words = [w.lower() for w in _WORD.findall(text)]
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    # Short or code-like text with no function words is most likely English in instruction data.
    return best if scores[best] > scores["en"] else "en"
