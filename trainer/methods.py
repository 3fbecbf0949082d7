"""Base model loading and the methods: LoRA, QLoRA, DoRA, AdaLoRA, IA3, prefix, prompt tuning, BitFit, full."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from trainer.config import ADAPTER_KINDS, PROMPT_LEARNING_METHODS, TrainConfig
from trainer.contract import PROMPT_FORMAT_FILE

BITFIT_WEIGHTS = "bitfit.safetensors"
BITFIT_CONFIG = "bitfit_config.json"
_LINEAR_CLASS_NAMES = {"Linear", "Linear4bit", "Linear8bitLt"}


def cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


Precision = Literal["bf16", "fp16", "fp32"]
PRECISION_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


def choose_precision(requested: str, legacy_bf16: bool | str, *, cuda: bool, bf16_ok: bool) -> Precision:
    """What a run computes in: `precision` when set, else the older `bf16` field when set, else the device's.

    auto: bf16 where CUDA supports it (Ampere and later), fp16 with loss scaling on other CUDA GPUs (V100,
    T4: bf16 there is emulated and slow), fp32 on CPU (autocast to 16 bits gains nothing there).
    """
    explicit: dict[str, Precision] = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
    if requested in explicit:
        return explicit[requested]
    if legacy_bf16 is True:
        return "bf16"
    if legacy_bf16 is False:
        return "fp32"
    if bf16_ok:
        return "bf16"
    return "fp16" if cuda else "fp32"


def resolve_precision(config: TrainConfig) -> Precision:
    chosen = choose_precision(
        config.precision, config.bf16, cuda=torch.cuda.is_available(), bf16_ok=cuda_bf16()
    )
    if chosen == "fp16" and config.parallelism == "fsdp":
        # FSDP's shards would need its sharded grad scaler, which is not wired (nor tested): fp32 there
        return "fp32"
    return chosen


def use_bf16(config: TrainConfig) -> bool:
    return resolve_precision(config) == "bf16"


def resolve_attn_implementation(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def bitsandbytes_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def load_tokenizer(path: Path | str, *, local_only: bool, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(path), local_files_only=local_only, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        # pad == eos is safe here: labels are built from spans, never from the padding mask
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_base_model(
    path: Path | str,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    quantize_4bit: bool = False,
    local_only: bool = True,
    rope_scaling: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The base model in `dtype`; with quantize_4bit, NF4 + double quantisation (QLoRA) on CUDA.

    rope_scaling (RopeScaling.model_dump()) is set on the model's config before the weights load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "local_files_only": local_only,
        "trust_remote_code": trust_remote_code,  # the folder's own code runs only when asked for
    }
    if rope_scaling is not None:
        model_config = AutoConfig.from_pretrained(
            str(path), local_files_only=local_only, trust_remote_code=trust_remote_code
        )
        apply_rope_scaling(model_config, rope_scaling)
        kwargs["config"] = model_config
    if quantize_4bit:
        if not bitsandbytes_available():
            raise RuntimeError("QLoRA needs CUDA and the bitsandbytes package")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def apply_rope_scaling(model_config: Any, rope: dict[str, Any]) -> None:
    """Set RoPE scaling on a transformers config; ValueError when the model has no (single) rotary embedding."""
    current = getattr(model_config, "rope_parameters", None)
    model_type = getattr(model_config, "model_type", "?")
    if not isinstance(current, dict) or "rope_type" not in current:
        how = "per-layer-type RoPE settings" if isinstance(current, dict) else "no rotary position embeddings"
        raise ValueError(f"rope_scaling: model_type {model_type!r} has {how}; RoPE scaling cannot be set")
    scaled = {k: v for k, v in current.items() if k == "rope_theta"}
    scaled.update(rope_type=rope["type"], factor=float(rope["factor"]))
    if rope["type"] == "yarn":
        scaled["original_max_position_embeddings"] = rope.get("original_max_position_embeddings") or getattr(
            model_config, "max_position_embeddings", None
        )
    model_config.rope_parameters = scaled
    model_config.validate_rope()


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in _LINEAR_CLASS_NAMES


def _output_embedding_names(model: Any) -> set[str]:
    out = model.get_output_embeddings()
    return {name for name, module in model.named_modules() if module is out and name}


def detect_linear_targets(model: Any) -> list[str]:
    """Leaf names of every linear layer except the output head: the "all-linear" LoRA recipe (QLoRA paper)."""
    skip = _output_embedding_names(model)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and _is_linear(module) and name not in skip
    }
    return sorted(names)


def detect_ia3_targets(model: Any) -> tuple[list[str], list[str]]:
    """(target, feed-forward) modules for IA3: keys, values and the MLP output, as in the IA3 paper."""
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    model_type = getattr(model.config, "model_type", "")
    if model_type in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        return (
            list(TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type]),
            list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type]),
        )
    linears = detect_linear_targets(model)
    ff = [n for n in linears if any(k in n for k in ("down", "fc2", "fc_out", "4h_to_h", "w2"))]
    kv = [n for n in linears if any(k in n for k in ("k_proj", "v_proj", "key", "value"))]
    if not ff or not kv:
        raise ValueError(
            f"cannot detect IA3 target modules for model_type={model_type!r}: set target_modules"
        )
    return kv + ff, ff


def embedding_module_names(model: Any) -> list[str]:
    """Leaf names of the input and (untied) output embeddings: trained and saved when tokens were added."""
    names = []
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is inp or (module is out and out is not None and out.weight is not inp.weight):
            names.append(name.rsplit(".", 1)[-1])
    return names


def build_peft_model(model: Any, config: TrainConfig, *, total_steps: int, new_tokens: bool) -> Any:
    """Wrap the base model in the configured PEFT method (BitFit: add/unfreeze biases in place)."""
    method = config.method
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "bitfit":
        for p in model.parameters():
            p.requires_grad_(False)
        add_bitfit_biases(model, config.target_modules or detect_linear_targets(model))
        if new_tokens:
            for p in model.get_input_embeddings().parameters():
                p.requires_grad_(True)
            out = model.get_output_embeddings()
            if out is not None:
                for p in out.parameters():
                    p.requires_grad_(True)
        return model

    from peft import (
        AdaLoraConfig,
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,
    )

    modules_to_save = embedding_module_names(model) if new_tokens else None
    peft_config: Any
    if method in ("lora", "qlora", "dora"):
        peft_config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=config.target_modules or detect_linear_targets(model),
            use_dora=method == "dora",
            modules_to_save=modules_to_save,
        )
    elif method == "adalora":
        tinit = max(1, total_steps // 10)
        tfinal = max(1, total_steps // 5)
        if tinit >= total_steps - tfinal:
            tinit, tfinal = 0, 0
        peft_config = AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=config.r,
            target_r=config.adalora_target_r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=config.target_modules or detect_linear_targets(model),
            total_step=max(total_steps, 1),
            tinit=tinit,
            tfinal=tfinal,
            modules_to_save=modules_to_save,
        )
    elif method == "ia3":
        if config.target_modules:
            targets = list(config.target_modules)
            ff = [n for n in targets if any(k in n for k in ("down", "fc2", "fc_out", "4h_to_h", "w2"))]
        else:
            targets, ff = detect_ia3_targets(model)
        peft_config = IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=targets,
            feedforward_modules=ff,
            modules_to_save=modules_to_save,
        )
    elif method == "prefix":
        peft_config = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=config.num_virtual_tokens,
            modules_to_save=modules_to_save,
        )
    elif method == "prompt":
        peft_config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=config.num_virtual_tokens,
            modules_to_save=modules_to_save,
        )
    else:  # pragma: no cover - the config Literal forbids it
        raise ValueError(f"unknown method {method}")
    return get_peft_model(model, peft_config)


# --------------------------------------------------------------------------------------------------
# continuing from an earlier run's adapter (init_adapter)


def init_adapter_run_dir(init_adapter: str) -> Path | None:
    """The earlier run's output_dir when init_adapter is its adapter/ (its tokenizer and prompt format)."""
    parent = Path(init_adapter).expanduser().resolve().parent
    if (parent / PROMPT_FORMAT_FILE).is_file() and (parent / "tokenizer_config.json").is_file():
        return parent
    return None


def check_init_adapter(init_adapter: str, method: str) -> Path:
    """The adapter folder, refused (ValueError naming init_adapter) when it is none or of another method."""
    path = Path(init_adapter).expanduser().resolve()
    if (path / BITFIT_CONFIG).is_file():
        found = "bitfit"
    elif (path / "adapter_config.json").is_file():
        saved = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        found = str(saved.get("peft_type", "?"))
        if found == "LORA" and saved.get("use_dora"):
            found = "LORA (DoRA)"
    else:
        raise ValueError(
            f"init_adapter {init_adapter!r} holds no adapter (adapter_config.json or {BITFIT_CONFIG})"
        )
    wanted = ADAPTER_KINDS.get(method, method)
    if found != wanted:
        raise ValueError(
            f"init_adapter {init_adapter!r} is a {found} adapter; method={method} trains {wanted}"
        )
    return path


def attach_init_adapter(model: Any, config: TrainConfig) -> Any:
    """The earlier adapter on the base, trainable: training continues from its weights (its own r, alpha)."""
    assert config.init_adapter is not None
    path = check_init_adapter(config.init_adapter, config.method)
    if config.method == "bitfit":
        load_bitfit(model, path)
        for p in model.parameters():
            p.requires_grad_(False)
        names = set(json.loads((path / BITFIT_CONFIG).read_text(encoding="utf-8"))["tensors"])
        for name, p in model.named_parameters():
            if name in names:
                p.requires_grad_(True)
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


# --------------------------------------------------------------------------------------------------
# BitFit


def add_bitfit_biases(model: nn.Module, targets: list[str]) -> list[str]:
    """Unfreeze biases of the target linears, adding zero biases where the architecture has none.

    Llama-style models have no biases at all; a zero bias is the identity at start, so training it is
    BitFit's "biases only" on such models. Returns the module paths that received a new bias.
    """
    wanted = set(targets)
    added: list[str] = []
    for name, module in model.named_modules():
        if not name or name.rsplit(".", 1)[-1] not in wanted or not isinstance(module, nn.Linear):
            continue
        if module.bias is None:
            module.bias = nn.Parameter(
                torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device)
            )
            added.append(name)
        module.bias.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("BitFit found no linear layers to train; set target_modules")
    return added


def bitfit_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_bitfit(model: nn.Module, adapter_dir: Path, *, base_model: str, targets: list[str]) -> None:
    from safetensors.torch import save_file

    adapter_dir.mkdir(parents=True, exist_ok=True)
    state = bitfit_state(model)
    save_file(state, str(adapter_dir / BITFIT_WEIGHTS))
    (adapter_dir / BITFIT_CONFIG).write_text(
        json.dumps(
            {
                "method": "bitfit",
                "note": "biases only; linears listed in target_modules got a zero bias if they had none",
                "base_model_name_or_path": base_model,
                "target_modules": targets,
                "tensors": sorted(state),
            },
            indent=2,
        ),
        encoding="utf-8",
    )


def load_bitfit(model: nn.Module, adapter_dir: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads((adapter_dir / BITFIT_CONFIG).read_text(encoding="utf-8"))
    add_bitfit_biases(model, list(meta["target_modules"]))
    state = load_file(str(adapter_dir / BITFIT_WEIGHTS))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))
    for p in model.parameters():
        p.requires_grad_(False)


def save_full_model(
    model: Any, dest: Path, *, tokenizer_dir: Path, state: dict[str, torch.Tensor] | None = None
) -> None:
    """method=full: the whole model as a Hugging Face folder (safetensors, config, tokenizer from tokenizer_dir).

    `state`: the weights gathered from FSDP shards; None reads them from the model.
    """
    from transformers import AutoTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # training switched it off; generation from the saved folder wants it
    model.save_pretrained(str(dest), safe_serialization=True, state_dict=state)
    AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(str(dest))
    if (tokenizer_dir / PROMPT_FORMAT_FILE).is_file():
        shutil.copyfile(tokenizer_dir / PROMPT_FORMAT_FILE, dest / PROMPT_FORMAT_FILE)


def is_prompt_learning(method: str) -> bool:
    return method in PROMPT_LEARNING_METHODS
