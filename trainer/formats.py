"""Prompt formats and label building from token spans.

A conversation is rendered as a list of pieces (prompt text, response text); each piece is tokenized on
its own and labelled as a whole, so the trained span is known by construction. Nothing here searches a
rendered string for a response marker. The same pieces, without the responses, build the inference
prompt, so training and generation see identical prompt tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.data import Message

IGNORE_INDEX = -100
FormatKind = Literal["chat_template", "alpaca", "chatml"]
PieceKind = Literal["prompt", "response", "template_response"]

ALPACA_TEMPLATES: dict[str, str] = {
    "preamble": "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n",
    "preamble_with_input": "Below is an instruction that describes a task, paired with an input that "
    "provides further context. Write a response that appropriately completes the request.\n\n",
    "system": "{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "input": "### Input:\n{input}\n\n",
    "generation_prompt": "### Response:\n",
    "after_response": "\n\n",
}
CHATML_TEMPLATES: dict[str, str] = {
    "system": "<|im_start|>system\n{content}<|im_end|>\n",
    "user": "<|im_start|>user\n{content}<|im_end|>\n",
    "input": "",
    "generation_prompt": "<|im_start|>assistant\n",
    "after_response": "\n",
}
CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")

# Built-in chat templates of model families (prompt_format: llama3 | mistral | gemma | phi3 | zephyr), as their
# instruct models' own templates lay turns out, for base models of the family that ship without one. Each
# template is rendered by the tokenizer like any chat template; the tokens listed must already be in its
# vocabulary (a Llama 3 tokenizer has <|eot_id|>; another family's has not, and is refused rather than trained
# on text look-alikes of special tokens).
FAMILY_TEMPLATES: dict[str, str] = {
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    # Mistral has no system role: the system message opens the first user turn
    "mistral": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
        "{% elif m['role'] == 'user' %}[INST] {{ ns.system }}{{ m['content'] }} [/INST]{% set ns.system = '' %}"
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    # Gemma has no system role either; the model's turns are "model"
    "gemma": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
        "{% elif m['role'] == 'user' %}<start_of_turn>user\n{{ ns.system }}{{ m['content'] }}<end_of_turn>\n"
        "{% set ns.system = '' %}{% else %}<start_of_turn>model\n{{ m['content'] }}<end_of_turn>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "phi3": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    "zephyr": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
}
FAMILY_TOKENS: dict[str, tuple[str, ...]] = {
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "mistral": (),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "phi3": ("<|user|>", "<|assistant|>", "<|end|>"),
    "zephyr": (),
}
# what a template sees for bos_token / eos_token when it is checked without a tokenizer
_TOKEN_PLACEHOLDERS = {"bos_token": "<s>", "eos_token": "</s>"}
# the conversation a chat template must render whole, each reply inside its own assistant span
_PROBE: list[Message] = [
    {"role": "system", "content": "PROBE-SYSTEM-7c1"},
    {"role": "user", "content": "PROBE-USER-7c2"},
    {"role": "assistant", "content": "PROBE-ASSISTANT-7c3"},
    {"role": "user", "content": "PROBE-USER-7c4"},
    {"role": "assistant", "content": "PROBE-ASSISTANT-7c5"},
]


class TemplateError(ValueError):
    """The chat template cannot be split into per-message spans for this conversation."""


@dataclass(frozen=True)
class PromptFormat:
    """Everything needed to rebuild the exact training prompt at inference; saved as prompt_format.json."""

    kind: FormatKind
    add_bos: bool
    bos_token: str | None
    end_of_turn: str
    stop_tokens: tuple[str, ...]
    templates: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    system_prompt: str | None = None
    added_tokens: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptFormat:
        return cls(
            kind=data["kind"],
            add_bos=bool(data["add_bos"]),
            bos_token=data.get("bos_token"),
            end_of_turn=data["end_of_turn"],
            stop_tokens=tuple(data.get("stop_tokens", ())),
            templates=dict(data.get("templates") or {}),
            chat_template=data.get("chat_template"),
            system_prompt=data.get("system_prompt"),
            added_tokens=tuple(data.get("added_tokens", ())),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PromptFormat:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


# --------------------------------------------------------------------------------------------------
# format resolution


def special_token_ids(tokenizer: Any) -> set[int]:
    """Named special tokens plus every added token flagged special (e.g. <|eot_id|>, <|im_end|>)."""
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(int(i) for i, tok in decoder.items() if getattr(tok, "special", False))
    return ids


def add_special_tokens(tokenizer: Any, tokens: list[str]) -> None:
    """Register tokens as special without dropping the tokenizer's existing extra special tokens."""
    existing = list(getattr(tokenizer, "additional_special_tokens", None) or [])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": existing + [t for t in tokens if t not in existing]}
    )


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _ids(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def missing_special_tokens(kind: FormatKind, tokenizer: Any) -> list[str]:
    """Tokens the format needs that the tokenizer lacks (they get added, embeddings resized)."""
    if kind != "chatml":
        return []
    vocab = tokenizer.get_vocab()
    return [t for t in CHATML_SPECIAL_TOKENS if t not in vocab]


def choose_kind(requested: str, tokenizer: Any, *, single_turn: bool) -> FormatKind:
    if requested == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_format=chat_template but the tokenizer has no chat template")
        return "chat_template"
    if requested in ("alpaca", "chatml"):
        return "alpaca" if requested == "alpaca" else "chatml"
    if getattr(tokenizer, "chat_template", None):
        return "chat_template"
    return "alpaca" if single_turn else "chatml"


def build_format(
    kind: FormatKind, tokenizer: Any, *, system_prompt: str | None = None, added_tokens: tuple[str, ...] = ()
) -> PromptFormat:
    """Freeze a format for this tokenizer; call after any missing special tokens were added."""
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no EOS token: responses could not be terminated")
    bos = tokenizer.bos_token
    if kind == "chat_template":
        template = str(tokenizer.chat_template)
        probe = PromptFormat(
            kind=kind,
            add_bos=False,
            bos_token=bos,
            end_of_turn=eos,
            stop_tokens=(eos,),
            chat_template=template,
        )
        end_of_turn = _probe_end_of_turn(probe, tokenizer)
        rendered = _render(probe, tokenizer, [{"role": "user", "content": "x"}], add_generation_prompt=True)
        template_has_bos = bos is not None and rendered.startswith(bos)
        add_bos = template_has_bos or _tokenizer_adds_bos(tokenizer)
        stops = tuple(dict.fromkeys([end_of_turn, eos]))
        return PromptFormat(
            kind=kind,
            add_bos=add_bos,
            bos_token=bos,
            end_of_turn=end_of_turn,
            stop_tokens=stops,
            chat_template=template,
            system_prompt=system_prompt,
        )
    if kind == "chatml":
        return PromptFormat(
            kind=kind,
            add_bos=_tokenizer_adds_bos(tokenizer),
            bos_token=bos,
            end_of_turn="<|im_end|>",
            stop_tokens=tuple(dict.fromkeys(["<|im_end|>", eos])),
            templates=dict(CHATML_TEMPLATES),
            system_prompt=system_prompt,
            added_tokens=added_tokens,
        )
    return PromptFormat(
        kind="alpaca",
        add_bos=_tokenizer_adds_bos(tokenizer),
        bos_token=bos,
        end_of_turn=eos,
        stop_tokens=(eos,),
        templates=dict(ALPACA_TEMPLATES),
        system_prompt=system_prompt,
    )


def _probe_end_of_turn(fmt: PromptFormat, tokenizer: Any) -> str:
    """The first special token a chat template emits after an assistant reply (e.g. <|im_end|>, <|eot_id|>)."""
    conv: list[Message] = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    prompt = _render(fmt, tokenizer, conv[:1], add_generation_prompt=True)
    full = _render(fmt, tokenizer, conv, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise TemplateError("chat template output for a reply does not extend its generation prompt")
    special = special_token_ids(tokenizer)
    for tid in _ids(tokenizer, full[len(prompt) :]):
        if tid in special:
            return str(tokenizer.convert_ids_to_tokens(tid))
    return str(tokenizer.eos_token)


def read_chat_template(value: str) -> str:
    """chat_template as given in a config: the Jinja source itself, or the path of a file that holds it."""
    if "{" not in value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError("chat_template is neither a Jinja template (no {{ or {%) nor a readable file")
        return path.read_text(encoding="utf-8")
    return value


def check_chat_template(source: str) -> None:
    """Refuse (ValueError saying why) a chat template that cannot train: Jinja that does not compile or fails
    to render, a role it drops, a reply outside the assistant's span, earlier turns rewritten by later ones.

    Rendered here with a sandboxed Jinja like transformers' (no tokenizer needed, so the service checks it
    before queueing a run); the trainer renders it again through the tokenizer for every sample.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ValueError(f"chat_template does not compile: {exc}") from None

    def render(conv: list[Message], generation: bool) -> str:
        try:
            return str(
                template.render(messages=conv, add_generation_prompt=generation, **_TOKEN_PLACEHOLDERS)
            )
        except Exception as exc:  # jinja raises anything a template does, raise_exception included
            raise ValueError(f"chat_template fails on a system/user/assistant conversation: {exc}") from None

    full = render(_PROBE, False)
    dropped = sorted({m["role"] for m in _PROBE if m["content"] not in full})
    if dropped:
        raise ValueError(f"chat_template does not render the {', '.join(dropped)} messages")
    prev = ""
    for i, msg in enumerate(_PROBE):
        before = render(_PROBE[:i], True) if msg["role"] == "assistant" else prev
        after = render(_PROBE[: i + 1], False)
        if not before.startswith(prev) or not after.startswith(before):
            raise ValueError(
                "chat_template rewrites earlier turns when a later one is added (not prefix-stable)"
            )
        span = after[len(before) :]
        # a system message may first show up inside the next user turn (families without a system role)
        if msg["content"] not in span and msg["role"] != "system":
            where = "the assistant's span" if msg["role"] == "assistant" else f"the {msg['role']} turn"
            raise ValueError(f"chat_template does not place the {msg['role']} message in {where}")
        if msg["role"] == "assistant" and any(
            m["content"] in span for m in _PROBE if m["role"] != "assistant"
        ):
            raise ValueError("chat_template puts other turns inside the assistant's span")
        prev = after


def install_chat_template(tokenizer: Any, prompt_format: str, chat_template: str | None) -> str:
    """Put a user template or a family's built-in one on the tokenizer; the prompt_format to choose with."""
    if chat_template is not None:
        source = read_chat_template(chat_template)
        check_chat_template(source)
        tokenizer.chat_template = source
        return "chat_template"
    if prompt_format in FAMILY_TEMPLATES:
        vocab = tokenizer.get_vocab()
        missing = [t for t in FAMILY_TOKENS[prompt_format] if t not in vocab]
        if missing:
            raise ValueError(
                f"prompt_format={prompt_format} needs the tokens {missing}, which this tokenizer lacks: "
                f"it is not a {prompt_format} tokenizer"
            )
        tokenizer.chat_template = FAMILY_TEMPLATES[prompt_format]
        return "chat_template"
    return prompt_format


# --------------------------------------------------------------------------------------------------
# rendering into pieces


def _chat_messages(conv: list[Message]) -> list[dict[str, str]]:
    out = []
    for m in conv:
        content = m["content"]
        extra = m.get("input")
        if extra:
            content = f"{content}\n\n{extra}"
        out.append({"role": m["role"], "content": content})
    return out


def _render(fmt: PromptFormat, tokenizer: Any, conv: list[Message], *, add_generation_prompt: bool) -> str:
    if not conv:
        return ""
    try:
        text = tokenizer.apply_chat_template(
            _chat_messages(conv),
            chat_template=fmt.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja raises arbitrary exceptions (e.g. "roles must alternate")
        raise TemplateError(f"chat template failed: {exc}") from exc
    return str(text)


def _with_system(fmt: PromptFormat, conv: list[Message]) -> list[Message]:
    if fmt.system_prompt and not any(m["role"] == "system" for m in conv):
        return [{"role": "system", "content": fmt.system_prompt}, *conv]
    return conv


def _template_pieces(
    fmt: PromptFormat, tokenizer: Any, conv: list[Message], *, add_generation_prompt: bool
) -> list[tuple[PieceKind, str]]:
    """Split a chat-template rendering into per-message deltas of successive prefixes."""
    pieces: list[tuple[PieceKind, str]] = []
    prev = ""
    for i, msg in enumerate(conv):
        if msg["role"] == "assistant":
            prompt = _render(fmt, tokenizer, conv[:i], add_generation_prompt=True)
            if not prompt.startswith(prev):
                raise TemplateError("chat template is not prefix-stable before an assistant turn")
            pieces.append(("prompt", prompt[len(prev) :]))
            full = _render(fmt, tokenizer, conv[: i + 1], add_generation_prompt=False)
            if not full.startswith(prompt):
                raise TemplateError("chat template reply does not extend its generation prompt")
            pieces.append(("template_response", full[len(prompt) :]))
            prev = full
        else:
            full = _render(fmt, tokenizer, conv[: i + 1], add_generation_prompt=False)
            if not full.startswith(prev):
                raise TemplateError("chat template is not prefix-stable (it rewrites earlier turns)")
            pieces.append(("prompt", full[len(prev) :]))
            prev = full
    if add_generation_prompt:
        prompt = _render(fmt, tokenizer, conv, add_generation_prompt=True)
        if not prompt.startswith(prev):
            raise TemplateError("chat template generation prompt does not extend the conversation")
        pieces.append(("prompt", prompt[len(prev) :]))
    return pieces


def _builtin_pieces(
    fmt: PromptFormat, conv: list[Message], *, add_generation_prompt: bool
) -> list[tuple[PieceKind, str]]:
    t = fmt.templates
    pieces: list[tuple[PieceKind, str]] = []
    has_system = any(m["role"] == "system" for m in conv)
    if fmt.kind == "alpaca" and not has_system:
        first_user = next((m for m in conv if m["role"] == "user"), None)
        with_input = first_user is not None and bool(first_user.get("input"))
        pieces.append(("prompt", t["preamble_with_input"] if with_input else t["preamble"]))
    for i, msg in enumerate(conv):
        if msg["role"] == "assistant":
            if i == 0 or conv[i - 1]["role"] != "assistant":
                pieces.append(("prompt", t["generation_prompt"]))
            pieces.append(("response", msg["content"]))
            if i + 1 < len(conv):
                pieces.append(("prompt", t["after_response"]))
            continue
        key = "system" if msg["role"] == "system" else "user"
        text = t[key].format(content=msg["content"])
        if msg.get("input"):
            if t["input"]:
                text += t["input"].format(input=msg["input"])
            else:
                text = t[key].format(content=f"{msg['content']}\n\n{msg['input']}")
        pieces.append(("prompt", text))
    if add_generation_prompt:
        pieces.append(("prompt", t["generation_prompt"]))
    return pieces


def render_pieces(
    fmt: PromptFormat, tokenizer: Any, conv: list[Message], *, add_generation_prompt: bool = False
) -> list[tuple[PieceKind, str]]:
    conv = _with_system(fmt, conv)
    if fmt.kind == "chat_template":
        return _template_pieces(fmt, tokenizer, conv, add_generation_prompt=add_generation_prompt)
    return _builtin_pieces(fmt, conv, add_generation_prompt=add_generation_prompt)


# --------------------------------------------------------------------------------------------------
# tokenization


def _token_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"token {token!r} is not in the tokenizer vocabulary")
    return int(tid)


def _fix_bos(fmt: PromptFormat, tokenizer: Any, ids: list[int], labels: list[int]) -> None:
    """Exactly one BOS: add it when the format wants one, drop doubles (chat template + tokenizer both)."""
    if not fmt.add_bos or fmt.bos_token is None:
        return
    bos = _token_id(tokenizer, fmt.bos_token)
    if not ids or ids[0] != bos:
        ids.insert(0, bos)
        labels.insert(0, IGNORE_INDEX)
    while len(ids) > 1 and ids[1] == bos:
        del ids[1]
        del labels[1]


def _tokenize_pieces(
    fmt: PromptFormat, tokenizer: Any, pieces: list[tuple[PieceKind, str]]
) -> tuple[list[int], list[int]]:
    eot = _token_id(tokenizer, fmt.end_of_turn)
    special = special_token_ids(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    for kind, text in pieces:
        toks = _ids(tokenizer, text)
        if kind == "prompt":
            ids += toks
            labels += [IGNORE_INDEX] * len(toks)
        elif kind == "response":
            toks = [*toks, eot]
            ids += toks
            labels += toks
        else:
            # a template reply is "content<end-of-turn>" plus template glue (e.g. a newline): the glue
            # after the first special token is not the model's to predict
            cut = next((j + 1 for j, tid in enumerate(toks) if tid in special), None)
            if cut is None:
                toks = [*toks, eot]
                cut = len(toks)
            ids += toks
            labels += toks[:cut] + [IGNORE_INDEX] * (len(toks) - cut)
    _fix_bos(fmt, tokenizer, ids, labels)
    return ids, labels


def encode_conversation(fmt: PromptFormat, tokenizer: Any, conv: list[Message]) -> Encoded:
    """Token ids and labels: assistant content and its end-of-turn token trained, everything else -100.

    Labels are aligned with input_ids (label[t] == input_ids[t] where trained); the model shifts them.
    """
    pieces = render_pieces(fmt, tokenizer, conv, add_generation_prompt=False)
    ids, labels = _tokenize_pieces(fmt, tokenizer, pieces)
    return Encoded(input_ids=ids, labels=labels)


def encode_prompt(fmt: PromptFormat, tokenizer: Any, conv: list[Message]) -> list[int]:
    """The exact prompt tokens the model saw before a response during training (earlier replies included)."""
    pieces = render_pieces(fmt, tokenizer, conv, add_generation_prompt=True)
    ids, _labels = _tokenize_pieces(fmt, tokenizer, pieces)
    return ids


def prompt_messages(prompt: str | list[Message] | list[dict[str, str]]) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    out: list[Message] = []
    for m in prompt:
        msg: Message = {"role": str(m["role"]), "content": str(m["content"])}
        if m.get("input"):
            msg["input"] = str(m["input"])
        out.append(msg)
    return out


def truncate(encoded: Encoded, max_len: int) -> Encoded | None:
    """Right-truncate; None when no trained token survives (the sample is dropped, never kept empty)."""
    ids, labels = encoded.input_ids[:max_len], encoded.labels[:max_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Encoded(input_ids=ids, labels=labels)
