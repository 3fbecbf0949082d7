"""LoRA training throughput: our trainer (packing, response-only logits) vs HF Trainer + peft (pad to longest)
and TRL's SFTTrainer (packing, padding-free); and our trainer on 2 DDP ranks under torchrun (scaling
efficiency = tokens/s of 2 ranks / (2 x tokens/s of 1 rank); on CPU with gloo, skipped on a single GPU).

Models are random-weight Llama-3-8B- and Llama-3.2-1B-shaped; the data are real instruction records from
../shared/data, so sample lengths follow a real distribution. Only real (non-padding) tokens are counted.
MFU = 4 * N * real tokens/s / the GPU's dense bf16 peak (forward plus input gradients through the frozen
base; gradient-checkpointing recomputation is not counted as useful work).

    python bench/train.py            # GPU: 8B and 1B LoRA, plus 8B QLoRA peak memory
    python bench/train.py --tiny     # CPU smoke run on a tiny model (figures mean nothing)
                                     # (each model also gets a DPO row: ours vs TRL's DPOTrainer; --no-dpo)
    python bench/train.py --cpu      # a laptop's first run: SmolLM2-135M- and Qwen2.5-0.5B-shaped models on
                                     # this CPU: seconds per step, tokens/s, time for one epoch of 200 records

Random weights: the time of a step depends on the shapes and the token counts, not on the weights' values.

Prints its figures, then one JSON line last.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import TrainConfig
from trainer.data import load_dataset
from trainer.formats import build_format, encode_conversation, truncate
from trainer.methods import bitsandbytes_available, detect_linear_targets
from trainer.run import main as train_main

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SOURCES = [  # (file, output key): chat, code, maths and role-play answers of very different lengths
    ("alpaca_eval/gpt4_1106_preview.model_outputs.json", "output"),
    ("codealpaca/code_alpaca_2k.json", "output"),
    ("alpacadatacleaned/gsm_8k_train.json", "output"),
    ("gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "response"),
]
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    # the two small instruct models docs/training.md recommends for a laptop, as their config.json has them
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 2048,
        "tie_word_embeddings": False,
    },
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def log(msg: str) -> None:
    print(msg, flush=True)


def real_records(limit: int, seed: int) -> list[dict[str, str]]:
    records = []
    for name, key in SOURCES:
        for r in json.loads((DATA / name).read_text(encoding="utf-8")):
            if r.get(key, "").strip():
                records.append(
                    {"instruction": r["instruction"], "input": r.get("input", ""), "output": r[key]}
                )
    random.Random(seed).shuffle(records)
    return records[:limit]


def build_tokenizer(records: list[dict[str, str]], vocab: int) -> Any:
    """A byte-level BPE trained on the data: no hub download; lengths close to a real tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [t for r in records for t in (r["instruction"], r["input"], r["output"])]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    hf = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.pad_token = hf.eos_token
    return hf


def save_random_model(path: Path, shape: str, tokenizer: Any, *, dtype: torch.dtype) -> int:
    """Random weights straight on the GPU in bf16 (an 8B fp32 CPU init would take minutes)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    spec = dict(SHAPES[shape])
    config_cls = Qwen2Config if spec.pop("model_type", "llama") == "qwen2" else LlamaConfig
    theta = spec.pop("rope_theta", 500000.0)
    config = config_cls(
        **spec,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return n_params


def reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def run_ours(config: TrainConfig, warmup: int) -> tuple[float, float | None]:
    reset_peak()
    summary = train_main(config)
    assert summary.state == "succeeded", summary
    rows = [json.loads(x) for x in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > warmup]
    start = next(r["timestamp"] for r in rows if r["step"] == warmup)
    tokens = sum(r["tokens"] for r in timed)
    return tokens / (timed[-1]["timestamp"] - start), peak_gib()


def run_baseline(
    model_dir: Path,
    data_path: Path,
    out: Path,
    *,
    batch: int,
    steps: int,
    warmup: int,
    max_len: int,
    bf16: bool,
) -> tuple[float, float | None]:
    """HF Trainer + peft LoRA on the same samples and labels, random batches padded to the longest."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    reset_peak()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fmt = build_format("alpaca", tokenizer)
    examples = []
    for conv in load_dataset(data_path).conversations:
        enc = truncate(encode_conversation(fmt, tokenizer, conv), max_len)
        if enc is not None:
            examples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    pad = tokenizer.pad_token_id
    real_per_batch: list[int] = []

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        real_per_batch.append(sum(len(f["input_ids"]) for f in features))
        return {
            "input_ids": torch.tensor(
                [f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]
            ),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features]),
            "attention_mask": torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
            ),
        }

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()

    dtype = torch.bfloat16 if bf16 else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    if torch.cuda.is_available():
        model.to("cuda")
    model = get_peft_model(
        model,
        LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=detect_linear_targets(model)),
    )
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=2e-4,
        bf16=bf16,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[Clock()]
    )
    trainer.train()
    peak = peak_gib()
    tokens = sum(real_per_batch[warmup:steps])
    rate = tokens / (marks[steps] - marks[warmup])
    del trainer, model
    reset_peak()
    return rate, peak


def run_trl(
    model_dir: Path,
    data_path: Path,
    out: Path,
    *,
    rows: int,
    steps: int,
    warmup: int,
    max_len: int,
    bf16: bool,
) -> tuple[float, float | None]:
    """TRL's SFTTrainer + peft LoRA, the baseline users compare with: packed (best-fit decreasing) and
    padding-free (one row of concatenated samples, position ids restarting), loss on the completions only."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    reset_peak()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fmt = build_format("alpaca", tokenizer)
    pairs = []
    for conv in load_dataset(data_path).conversations:
        enc = encode_conversation(fmt, tokenizer, conv)
        cut = next(i for i, label in enumerate(enc.labels) if label != -100)
        pairs.append(
            {
                "prompt": tokenizer.decode(enc.input_ids[:cut], skip_special_tokens=True),
                "completion": tokenizer.decode(enc.input_ids[cut:], skip_special_tokens=True),
            }
        )
    marks: dict[int, float] = {}
    real: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()

    class Counting(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
            mask = inputs.get("attention_mask")
            real.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return super().compute_loss(model, inputs, *a, **k)  # type: ignore[no-untyped-call]

    dtype = torch.bfloat16 if bf16 else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    if torch.cuda.is_available():
        model.to("cuda")
    config = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=2e-4,
        bf16=bf16,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        max_length=max_len,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        completion_only_loss=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Counting(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=detect_linear_targets(model)
        ),
        callbacks=[Clock()],
    )
    trainer.train()
    peak = peak_gib()
    rate = sum(real[warmup:steps]) / (marks[steps] - marks[warmup])
    del trainer, model
    reset_peak()
    return rate, peak


def run_ranks(config: TrainConfig, ranks: int, warmup: int, work: Path) -> float:
    """Real tokens/s of our trainer under torchrun with `ranks` ranks (one per GPU; on CPU, gloo and one
    thread per rank so that 1 and N ranks get the same compute per rank)."""
    import os
    import subprocess

    out = work / f"ranks-{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = config.model_copy(update={"output_dir": str(out), "gpus": ranks})
    path = work / f"ranks-{ranks}.yaml"
    cfg.to_yaml(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    proc = subprocess.run(
        [*cmd, "-m", "trainer", str(path)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{ranks} ranks failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > warmup]
    start = next(r["timestamp"] for r in rows if r["step"] == warmup)
    return float(sum(r["tokens"] for r in timed) / (timed[-1]["timestamp"] - start))


def bench_ddp(config: TrainConfig, warmup: int, work: Path, shape: str) -> dict[str, Any]:
    """Scaling efficiency of 2 DDP ranks: tokens/s of 2 ranks / (2 x tokens/s of 1 rank), same per-rank batch."""
    gpus = torch.cuda.device_count()
    if torch.cuda.is_available() and gpus < 2:
        log(f"[{shape}] DDP row skipped: needs 2 GPUs, this machine has {gpus}")
        return {"ddp_ranks": 2, "ddp_tokens_per_s": None, "ddp_scaling_efficiency": None}
    one = run_ranks(config, 1, warmup, work)
    two = run_ranks(config, 2, warmup, work)
    efficiency = two / (2 * one)
    backend = "nccl" if torch.cuda.is_available() else "gloo, CPU, 1 thread per rank"
    log(
        f"[{shape}] DDP ({backend}): 1 rank {one:,.0f}, 2 ranks {two:,.0f} tokens/s, efficiency {efficiency:.2f}"
    )
    return {
        "ddp_ranks": 2,
        "ddp_backend": backend,
        "one_rank_tokens_per_s": round(one, 1),
        "ddp_tokens_per_s": round(two, 1),
        "ddp_scaling_efficiency": round(efficiency, 3),
    }


def gpu_peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench_model(
    shape: str, args: argparse.Namespace, work: Path, records: list[dict[str, str]]
) -> dict[str, Any]:
    bf16 = torch.cuda.is_available()
    tokenizer = build_tokenizer(records, 1000 if args.tiny else 32000)
    model_dir = work / shape
    n_params = save_random_model(model_dir, shape, tokenizer, dtype=torch.bfloat16 if bf16 else torch.float32)
    data_path = work / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    lengths = [len(tokenizer(r["instruction"] + r["input"] + r["output"])["input_ids"]) for r in records]
    mean_len = sum(lengths) / len(lengths)
    log(f"[{shape}] {n_params / 1e6:,.1f}M params; {len(records)} samples, mean {mean_len:.0f} tokens")

    baseline, baseline_peak = run_baseline(
        model_dir,
        data_path,
        work / "hf",
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        max_len=args.max_len,
        bf16=bf16,
    )
    log(f"[{shape}] baseline HF Trainer: {baseline:,.0f} real tokens/s, peak {baseline_peak} GiB")

    # about as many real tokens per step as the baseline's batch
    rows = max(1, round(args.batch * min(mean_len, args.max_len) / args.max_len))
    trl_rate, trl_peak = run_trl(
        model_dir,
        data_path,
        work / "trl",
        rows=rows,
        steps=args.steps,
        warmup=args.warmup,
        max_len=args.max_len,
        bf16=bf16,
    )
    log(
        f"[{shape}] baseline TRL SFTTrainer (packing, padding-free): {trl_rate:,.0f} real tokens/s, peak {trl_peak} GiB"
    )
    config = TrainConfig(
        base_model=str(model_dir),
        dataset_path=str(data_path),
        output_dir=str(work / f"ours-{shape}"),
        method="lora",
        r=16,
        alpha=32,
        max_seq_len=args.max_len,
        packing=True,
        batch_size=rows,
        grad_accum=1,
        max_steps=args.steps,
        val_fraction=0.0,
        logging_steps=1,
        eval_steps=0,
        save_steps=0,
        sample_prompts=0,
        gradient_checkpointing=True,
        prompt_format="alpaca",
        resume=False,
    )
    ours, ours_peak = run_ours(config, args.warmup)
    peak = gpu_peak_tflops(args.peak_tflops)
    mfu = round(4 * n_params * ours / (peak * 1e12), 4) if peak else None
    log(
        f"[{shape}] ours: {ours:,.0f} real tokens/s ({rows} packed rows of {args.max_len}), peak {ours_peak} GiB"
    )
    log(
        f"[{shape}] speedup {ours / baseline:.2f}x over HF Trainer, {ours / trl_rate:.2f}x over TRL, MFU {mfu}"
    )
    ddp = bench_ddp(config, args.warmup, work, shape)

    qlora_peak = None
    if shape == "llama-3-8b" and bitsandbytes_available():
        qcfg = config.model_copy(
            update={"method": "qlora", "output_dir": str(work / "qlora"), "max_steps": 5}
        )
        _rate, qlora_peak = run_ours(qcfg, 1)
        log(f"[{shape}] QLoRA peak {qlora_peak} GiB")
    elif shape == "llama-3-8b":
        log(f"[{shape}] QLoRA skipped: needs CUDA and bitsandbytes")
    dpo = bench_dpo(shape, model_dir, records, args, work) if not args.no_dpo else {}
    shutil.rmtree(model_dir, ignore_errors=True)
    return {
        **dpo,
        "model": shape,
        "params": n_params,
        "tokens_per_s": round(ours, 1),
        "baseline_tokens_per_s": round(baseline, 1),
        "speedup": round(ours / baseline, 3),
        "mfu": mfu,
        "peak_mem_gb": ours_peak,
        "baseline_peak_mem_gb": baseline_peak,
        "trl_tokens_per_s": round(trl_rate, 1),
        "speedup_vs_trl": round(ours / trl_rate, 3),
        "trl_peak_mem_gb": trl_peak,
        "qlora_peak_mem_gb": qlora_peak,
        **ddp,
    }


def bench_cpu(
    shape: str, args: argparse.Namespace, work: Path, records: list[dict[str, str]]
) -> dict[str, Any]:
    """A newcomer's first LoRA run on this CPU: the trainer's defaults (LoRA r=16 on every linear layer,
    packing, gradient checkpointing, fp32 on CPU) with one packed row of --max-len tokens per step."""
    import os

    tokenizer = build_tokenizer(records, 32000)
    model_dir = work / shape
    n_params = save_random_model(model_dir, shape, tokenizer, dtype=torch.float32)
    data_path = work / f"epoch-{shape}.jsonl"
    epoch = records[: args.epoch_records]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in epoch), encoding="utf-8")
    fmt = build_format("alpaca", tokenizer)
    encoded = [encode_conversation(fmt, tokenizer, c) for c in load_dataset(data_path).conversations]
    epoch_tokens = sum(min(len(e.input_ids), args.max_len) for e in encoded)
    load_before = os.getloadavg()
    out_dir = work / f"ours-{shape}"
    cpu_marks: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        # the process's CPU seconds when each metrics line appears: on a shared machine wall time measures the
        # neighbours too, CPU time mostly measures us
        while not done.is_set():
            path = out_dir / "metrics.jsonl"
            n = len(path.read_text().splitlines()) if path.is_file() else 0
            cpu_marks.setdefault(n, time.process_time())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    config = TrainConfig(
        base_model=str(model_dir),
        dataset_path=str(data_path),
        output_dir=str(out_dir),
        method="lora",
        max_seq_len=args.max_len,
        batch_size=1,
        grad_accum=1,
        max_steps=args.steps,
        val_fraction=0.0,
        logging_steps=1,
        eval_steps=0,
        save_steps=0,
        sample_prompts=0,
        prompt_format="alpaca",
        resume=False,
    )
    rate, _peak = run_ours(config, args.warmup)
    done.set()
    watcher.join()
    rows = [json.loads(x) for x in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > args.warmup]
    start = next(r["timestamp"] for r in rows if r["step"] == args.warmup)
    step_s = (timed[-1]["timestamp"] - start) / len(timed)
    load_after = os.getloadavg()
    cpu_step_s = (cpu_marks[len(rows)] - cpu_marks[args.warmup]) / len(timed)
    threads = torch.get_num_threads()
    tokens_per_step = sum(r["tokens"] for r in timed) / len(timed)
    result = {
        "model": shape,
        "params": n_params,
        "threads": threads,
        "seconds_per_step": round(step_s, 2),
        "cpu_seconds_per_step": round(cpu_step_s, 2),
        # what the same step takes when nothing else runs: the CPU seconds spread over our threads
        "idle_seconds_per_step": round(cpu_step_s / threads, 2),
        "tokens_per_step": round(tokens_per_step),
        "tokens_per_s": round(rate, 1),
        "epoch_records": len(epoch),
        "epoch_tokens": epoch_tokens,
        "epoch_minutes": round(epoch_tokens / rate / 60, 1),
        "idle_tokens_per_s": round(tokens_per_step / (cpu_step_s / threads), 1),
        "idle_epoch_minutes": round(epoch_tokens / (tokens_per_step / (cpu_step_s / threads)) / 60, 1),
        "loadavg_1m": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    log(
        f"[{shape}] {n_params / 1e6:,.1f}M params: {step_s:.2f} s/step ({result['tokens_per_step']} real "
        f"tokens/step), {rate:,.0f} tokens/s; 1 epoch of {len(epoch)} records ({epoch_tokens:,} tokens) "
        f"= {result['epoch_minutes']} min; {cpu_step_s:.1f} CPU s/step on {threads} threads; "
        f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    shutil.rmtree(model_dir, ignore_errors=True)
    return result


def dpo_pairs(records: list[dict[str, str]], seed: int) -> list[dict[str, str]]:
    """Real prompts and answers as preference pairs: chosen is the record's answer, rejected another's."""
    rng = random.Random(seed)
    others = list(range(len(records)))
    rng.shuffle(others)
    pairs = []
    for i, r in enumerate(records):
        j = others[i] if others[i] != i else (i + 1) % len(records)
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        pairs.append({"prompt": prompt, "chosen": r["output"], "rejected": records[j]["output"]})
    return pairs


def run_trl_dpo(
    model_dir: Path,
    config: TrainConfig,
    out: Path,
    *,
    steps: int,
    warmup: int,
    bf16: bool,
) -> tuple[float, float | None]:
    """TRL's DPOTrainer + peft LoRA on the same pairs, as our encoder renders them (alpaca prompt, same
    tokens), the same pairs per step and max length; reference log-probs precomputed before training, as ours."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    from trainer.preference import prepare_preference_data

    reset_peak()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    data = prepare_preference_data(config, tokenizer)
    rows = []
    for pair in data.train_pairs:
        n = next(i for i, label in enumerate(pair.chosen.labels) if label != -100)
        m = next(i for i, label in enumerate(pair.rejected.labels) if label != -100)
        rows.append(
            {
                "prompt": tokenizer.decode(pair.chosen.input_ids[:n], skip_special_tokens=True),
                "chosen": tokenizer.decode(pair.chosen.input_ids[n:], skip_special_tokens=True),
                "rejected": tokenizer.decode(pair.rejected.input_ids[m:], skip_special_tokens=True),
            }
        )
    marks: dict[int, float] = {}
    real: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()

    class Counting(DPOTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
            real.append(int(inputs["attention_mask"].sum()))
            return super().compute_loss(model, inputs, *a, **k)  # type: ignore[no-untyped-call]

    dtype = torch.bfloat16 if bf16 else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    if torch.cuda.is_available():
        model.to("cuda")
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=config.lr,
        beta=config.beta,
        bf16=bf16,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        max_length=config.max_seq_len,
        precompute_ref_log_probs=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Counting(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="CAUSAL_LM",
            r=config.r,
            lora_alpha=config.alpha,
            target_modules=detect_linear_targets(model),
        ),
        callbacks=[Clock()],
    )
    trainer.train()
    peak = peak_gib()
    rate = sum(real[warmup:steps]) / (marks[steps] - marks[warmup])
    del trainer, model
    reset_peak()
    return rate, peak


def bench_dpo(
    shape: str, model_dir: Path, records: list[dict[str, str]], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """The DPO row: real tokens/s (chosen and rejected rows, no padding) of ours and of TRL's DPOTrainer with
    the same model, pairs, LoRA and pairs per step, plus peak memory. Reference log-probs are computed once
    before the first step by both and are not in the timed steps."""
    bf16 = torch.cuda.is_available()
    pairs_path = work / "pairs.jsonl"
    n_pairs = max(args.dpo_pairs_per_step * (args.steps + 1), 32)
    pairs = dpo_pairs(records[:n_pairs], seed=1)
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    config = TrainConfig(
        base_model=str(model_dir),
        dataset_path=str(pairs_path),
        output_dir=str(work / f"dpo-{shape}"),
        objective="dpo",
        method="lora",
        r=16,
        alpha=32,
        lr=5e-6,
        max_seq_len=args.max_len,
        batch_size=args.dpo_pairs_per_step,
        grad_accum=1,
        max_steps=args.steps,
        val_fraction=0.0,
        logging_steps=1,
        eval_steps=0,
        save_steps=0,
        sample_prompts=0,
        gradient_checkpointing=True,
        prompt_format="alpaca",
        resume=False,
    )
    trl_rate, trl_peak = run_trl_dpo(
        model_dir, config, work / "trl-dpo", steps=args.steps, warmup=args.warmup, bf16=bf16
    )
    ours, ours_peak = run_ours(config, args.warmup)
    log(
        f"[{shape}] DPO ({args.dpo_pairs_per_step} pairs/step): ours {ours:,.0f} real tokens/s, peak {ours_peak} GiB; "
        f"TRL DPOTrainer {trl_rate:,.0f} real tokens/s, peak {trl_peak} GiB; {ours / trl_rate:.2f}x"
    )
    return {
        "dpo_tokens_per_s": round(ours, 1),
        "dpo_peak_mem_gb": ours_peak,
        "dpo_trl_tokens_per_s": round(trl_rate, 1),
        "dpo_trl_peak_mem_gb": trl_peak,
        "dpo_speedup_vs_trl": round(ours / trl_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--no-dpo", action="store_true", help="skip the DPO row (ours vs TRL DPOTrainer)")
    parser.add_argument("--dpo-pairs-per-step", type=int, default=4, help="DPO row: pairs per optimizer step")
    parser.add_argument(
        "--cpu", action="store_true", help="laptop timings on this CPU (SmolLM2-135M, Qwen2.5-0.5B shapes)"
    )
    parser.add_argument("--epoch-records", type=int, default=200, help="--cpu: records in the epoch estimate")
    parser.add_argument("--models", default="llama-3-8b,llama-3.2-1b")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="baseline samples per step")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak, if not in the table"
    )
    args = parser.parse_args()
    if args.tiny:
        args.models, args.samples, args.steps, args.warmup, args.max_len = "tiny", 300, 8, 2, 512
        torch.set_num_threads(1)
    if args.cpu:
        if args.models == parser.get_default("models"):
            args.models = "smollm2-135m,qwen2.5-0.5b"
        if args.max_len == parser.get_default("max_len"):
            args.max_len = 1024
        args.samples, args.steps, args.warmup = max(args.epoch_records, 300), min(args.steps, 4), 1
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    log(f"device: {device}; torch {torch.__version__}")
    records = real_records(args.samples, seed=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for shape in args.models.split(","):
            bench = bench_cpu if args.cpu else bench_model
            results.append(bench(shape, args, Path(tmp), records))
    head = results[0]
    print(json.dumps({**head, "device": device, "runs": results}))


if __name__ == "__main__":
    main()
