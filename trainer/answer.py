"""`python -m trainer.answer SPEC.json`: one system answers an evaluation's prompts, and its validation loss.

The evaluation job (app/evaluation/jobs.py) runs this in a child process, as the training job runs
`python -m trainer`, and tails what it writes into the spec's output_dir (names in trainer/contract.py):

- ANSWERS_FILE: one ``{"id", "answer", "tokens"}`` line per prompt, appended and flushed as each batch
  finishes (``tokens``: generated tokens before the stop token; ``"truncated": true`` when max_new_tokens
  cut the answer off before a stop token). A prompt the format cannot render (e.g. a
  template that refuses a system turn) gets ``"answer": ""`` with an ``"error"`` instead of stopping the run.
- STATUS_FILE: ``{"state", "phase", "done", "total", "error", "prompt_format", "prompt_format_source", ...}``
  replaced atomically after every batch; ``prompt_format`` says which format built the prompts.
- VAL_METRICS_FILE (with ``val_path``): ``{"loss", "perplexity", "tokens", "records", "dropped"}``, the mean
  cross-entropy over assistant tokens with the training masks and truncation (trainer.formats, and the
  very function, trainer.run.evaluate, that reports a run's eval_loss), and exp(loss).

Why a kill loses and repeats nothing: an answer line is written whole (one write, then flush and fsync)
after its batch; on start, a last line without its newline (cut by the kill) is truncated away, and every
id already in the file is skipped. The parent reads only complete lines, so it never sees the cut one.
One generator per output_dir at a time (an flock on LOCK_FILE): a second one, started by the retry of a
killed worker while the first still runs, waits for it and then skips what it answered.
A CANCEL_FILE is looked for before every batch; the exit code says how it ended (EXIT_OK, EXIT_FAILED with
the traceback in STATUS_FILE, EXIT_CANCELLED).

Prompt format: with ``adapter_dir``, the one saved with the adapter (its tokenizer too, as
trainer.infer.load_for_inference); for a bare base model, its tokenizer's chat template when it has one,
else the trainer's alpaca format (what `prompt_format: auto` trains single-turn data with; ChatML would
need tokens the base model has no trained embeddings for).

Sampling (``greedy: false``) is reproducible for the same spec: batches are seeded from ``seed`` and their
number (trainer.infer.iter_completions). A resumed run batches the remaining prompts afresh, so its
sampled answers are other draws than an uninterrupted run's; greedy answers are the same either way.

torch and transformers are imported inside :func:`run`, so even a worker without them gets a failed
status that says so.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
import traceback
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.contract import (
    ANSWERS_FILE,
    CANCEL_FILE,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    PROMPT_FORMAT_FILE,
    STATUS_FILE,
    TRAIN_CONFIG_FILE,
    VAL_METRICS_FILE,
)
from trainer.formats import PromptFormat, TemplateError, build_format
from trainer.reporting import write_json_atomic

State = Literal["running", "succeeded", "cancelled", "failed"]
LOCK_FILE = ".answer.lock"  # one generator per output_dir at a time
# the trainer's default max_seq_len: validation records of a bare base model are truncated like a run's
DEFAULT_MAX_SEQ_LEN = 2048


class AnswerSpec(BaseModel):
    """What the evaluation job asks of one system (the JSON object in SPEC.json)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(
        description="Folder name under models_dir, or an absolute path inside it. None: the base the "
        "adapter was trained on (still checked against models_dir)."
    )
    models_dir: str = Field(description="Every base model must resolve inside this folder.")
    adapter_dir: str | None = Field(
        default=None, description="A training run's artifacts folder (adapter/, prompt_format.json, ...)."
    )
    prompts_path: str = Field(description='JSONL of {"id", "messages"}, each ending with a user turn.')
    output_dir: str
    max_new_tokens: int = Field(default=256, ge=1)
    greedy: bool = True
    temperature: float = Field(default=0.7, gt=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(default=8, ge=1)
    val_path: str | None = Field(
        default=None, description="Records (alpaca or messages JSONL) for validation loss and perplexity."
    )

    @classmethod
    def load(cls, path: str | Path) -> AnswerSpec:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class Prompt:
    id: str
    messages: list[dict[str, str]]


@dataclass
class Status:
    """STATUS_FILE's content; written whole after every change."""

    path: Path
    state: State = "running"
    phase: str = "loading"
    done: int = 0
    total: int = 0
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # prompt format, device, notes

    def write(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        write_json_atomic(
            self.path,
            {
                "state": self.state,
                "phase": self.phase,
                "done": self.done,
                "total": self.total,
                "error": self.error,
                **self.info,
                "updated_at": time.time(),
            },
        )


class Cancelled(Exception):
    """CANCEL_FILE appeared: stop before the next batch."""


# --------------------------------------------------------------------------------------------------
# files


def read_prompts(path: Path) -> list[Prompt]:
    """The prompts in file order; an id given twice is answered once (its first messages)."""
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pid, messages = str(item["id"]), item["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: expected {{'id', 'messages'}}: {exc}") from exc
        if pid in seen:
            continue
        seen.add(pid)
        prompts.append(Prompt(id=pid, messages=messages if isinstance(messages, list) else []))
    return prompts


def answered_ids(path: Path) -> set[str]:
    """Ids already in the answers file, after truncating a last line that a kill cut short."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as fh:
            fh.truncate(len(complete))
    ids: set[str] = set()
    for line in complete.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict) and "id" in item:
            ids.add(str(item["id"]))
    return ids


def append_lines(fh: IO[str], rows: list[dict[str, Any]]) -> None:
    """One write per batch, then flush and fsync: a kill leaves whole lines plus at most one cut one."""
    fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    fh.flush()
    os.fsync(fh.fileno())


def resolve_base(base_model: str, models_dir: str) -> Path:
    """The base model folder; a name or absolute path resolving outside models_dir is refused."""
    root = Path(models_dir).expanduser().resolve()
    path = Path(base_model).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"base_model {base_model!r} resolves outside models_dir {str(root)!r}")
    if not resolved.is_dir():
        raise FileNotFoundError(f"base_model {base_model!r} is not a folder in models_dir {str(root)!r}")
    return resolved


def prompt_problem(messages: list[dict[str, str]]) -> str | None:
    """Why these messages are no prompt to answer, or None."""
    if not messages:
        return "no messages"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            return "a message without role and content"
    if messages[-1]["role"] != "user":
        return f"the last message is from {messages[-1]['role']!r}, not the user"
    return None


# --------------------------------------------------------------------------------------------------
# the run


def run(spec: AnswerSpec) -> int:
    """Answer every unanswered prompt, then the validation loss; an exit code from trainer.contract."""
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a") as lock:
        # A worker killed by SIGKILL leaves its generator running (its own process group), and the job's
        # retry starts another on the same folder: the second waits here until the first is done (the kernel
        # drops the lock when a process dies), then finds its answers and skips them.
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = Status(out / STATUS_FILE)
        try:
            status.write()
            _run(spec, out, status)
        except Cancelled:
            status.write(state="cancelled")
            return EXIT_CANCELLED
        except Exception:
            status.write(state="failed", error=traceback.format_exc())
            return EXIT_FAILED
        status.write(state="succeeded", phase="done")
        return EXIT_OK


def _run(spec: AnswerSpec, out: Path, status: Status) -> None:
    prompts = read_prompts(Path(spec.prompts_path))
    answers_path = out / ANSWERS_FILE
    done = answered_ids(answers_path)
    todo = [p for p in prompts if p.id not in done]
    status.write(total=len(prompts), done=len(prompts) - len(todo))
    _check_cancel(out)
    if not todo and spec.val_path is None:
        return

    model, tokenizer, fmt, max_seq_len = _load(spec, status)
    if todo:
        _answer(spec, out, status, model, tokenizer, fmt, todo)
    if spec.val_path is not None:
        _check_cancel(out)
        status.write(phase="validation")
        metrics = validation_metrics(
            model, tokenizer, fmt, Path(spec.val_path), batch_size=spec.batch_size, max_seq_len=max_seq_len
        )
        write_json_atomic(out / VAL_METRICS_FILE, metrics)


def _check_cancel(out: Path) -> None:
    if (out / CANCEL_FILE).exists():
        raise Cancelled


def _load(spec: AnswerSpec, status: Status) -> tuple[Any, Any, PromptFormat, int]:
    """(model, tokenizer, prompt format, max_seq_len) on the GPU when there is one; status says which format."""
    import torch

    from trainer.config import TrainConfig
    from trainer.infer import load_for_inference
    from trainer.methods import cuda_bf16, load_base_model, load_tokenizer, resolve_attn_implementation

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {"device": device.type, "notes": []}
    if spec.adapter_dir is not None:
        artifacts = Path(spec.adapter_dir)
        trained = TrainConfig.from_yaml(artifacts / TRAIN_CONFIG_FILE)
        base = resolve_base(spec.base_model or trained.base_model, spec.models_dir)
        if trained.method == "full":
            info["notes"].append("a fully fine-tuned model (model/): the base model is not loaded")
        elif Path(trained.base_model).resolve() != base:
            info["notes"].append(f"adapter trained on {trained.base_model}, applied to {base}")
        model, tokenizer, fmt = load_for_inference(artifacts, str(base), device=device)
        info.update(prompt_format=fmt.kind, prompt_format_source=f"the adapter's {PROMPT_FORMAT_FILE}")
        max_seq_len = trained.max_seq_len
    else:
        if spec.base_model is None:
            raise ValueError("base_model is required without adapter_dir")
        base = resolve_base(spec.base_model, spec.models_dir)
        tokenizer = load_tokenizer(base, local_only=True)
        model = load_base_model(
            base,
            dtype=torch.bfloat16 if cuda_bf16() else torch.float32,
            attn_implementation=resolve_attn_implementation("auto"),
            local_only=True,
        )
        model.to(device).eval()
        fmt, source = base_format(tokenizer, info["notes"])
        info.update(prompt_format=fmt.kind, prompt_format_source=source)
        context = getattr(model.config, "max_position_embeddings", None)
        max_seq_len = min(DEFAULT_MAX_SEQ_LEN, int(context)) if context else DEFAULT_MAX_SEQ_LEN
    info["base_model"] = str(base)
    status.info.update(info)
    status.write(phase="generating")
    print(f"answering with prompt format {fmt.kind} ({info['prompt_format_source']})", file=sys.stderr)
    return model, tokenizer, fmt, max_seq_len


def base_format(tokenizer: Any, notes: list[str]) -> tuple[PromptFormat, str]:
    """A bare base model's prompt format and where it comes from: its chat template, else alpaca."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return build_format("chat_template", tokenizer), "the base tokenizer's chat template"
        except TemplateError as exc:
            notes.append(f"chat template unusable ({exc}); the default format instead")
    return build_format("alpaca", tokenizer), "the trainer's default format (no usable chat template)"


def _answer(
    spec: AnswerSpec,
    out: Path,
    status: Status,
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    todo: list[Prompt],
) -> None:
    from trainer.formats import encode_prompt, prompt_messages
    from trainer.infer import iter_completions

    encoded: list[list[int]] = []
    ready: list[Prompt] = []
    refused: list[dict[str, Any]] = []
    for p in todo:
        problem = prompt_problem(p.messages)
        if problem is None:
            try:
                encoded.append(encode_prompt(fmt, tokenizer, prompt_messages(p.messages)))
                ready.append(p)
                continue
            except TemplateError as exc:
                problem = str(exc)
        refused.append({"id": p.id, "answer": "", "tokens": 0, "error": problem})

    with (out / ANSWERS_FILE).open("a", encoding="utf-8") as fh:
        if refused:
            append_lines(fh, refused)
            status.write(done=status.done + len(refused))
        batches = iter_completions(
            model,
            tokenizer,
            fmt,
            encoded,
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            greedy=spec.greedy,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
        )
        while True:
            # the cancel check sits before the generator runs its next batch
            _check_cancel(out)
            batch = next(batches, None)
            if batch is None:
                break
            rows = [
                {"id": ready[c.index].id, "answer": c.text, "tokens": len(c.token_ids)}
                | ({} if c.stopped else {"truncated": True})
                for c in batch
            ]
            append_lines(fh, rows)
            status.write(done=status.done + len(rows))


def validation_metrics(
    model: Any, tokenizer: Any, fmt: PromptFormat, path: Path, *, batch_size: int, max_seq_len: int
) -> dict[str, Any]:
    """Mean loss per assistant token over the records, exactly as training reports eval_loss, and exp of it."""
    from trainer.data import load_dataset
    from trainer.formats import IGNORE_INDEX, Encoded, encode_conversation, truncate
    from trainer.run import evaluate

    data = load_dataset(path)
    dropped: Counter[str] = Counter(data.dropped)
    examples: list[Encoded] = []
    for conv in data.conversations:
        try:
            enc = truncate(encode_conversation(fmt, tokenizer, conv), max_seq_len)
        except TemplateError:
            dropped["template_error"] += 1
            continue
        if enc is None:
            dropped["response_truncated"] += 1
            continue
        examples.append(enc)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss = evaluate(
        model, examples, batch_size=batch_size, pad_id=int(pad_id), device=device, amp=nullcontext
    )
    # the targets evaluate() divides by: labels after the one-position shift
    tokens = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples)
    perplexity = math.exp(loss) if loss is not None and loss < 700 else None  # exp(700) is near float max
    return {
        "loss": loss,
        "perplexity": perplexity,
        "tokens": tokens,
        "records": len(examples),
        "dropped": dict(dropped),
    }


def cli(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainer.answer SPEC.json", file=sys.stderr)
        return EXIT_FAILED
    try:
        spec = AnswerSpec.load(args[0])
    except (OSError, ValueError, ValidationError) as exc:
        # no output_dir to write a status into: the parent reads stderr (its log) and the exit code
        print(f"answer spec {args[0]}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    code = run(spec)
    ended = {EXIT_OK: "succeeded", EXIT_CANCELLED: "cancelled"}.get(code, "failed")
    print(f"answers {ended}: see {Path(spec.output_dir) / STATUS_FILE}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(cli())
