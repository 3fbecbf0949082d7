"""TrainConfig: every knob of a training run, validated, loadable from YAML or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["lora", "qlora", "dora", "adalora", "ia3", "prefix", "prompt", "bitfit", "full"]
PromptFormatName = Literal[
    "auto", "chat_template", "alpaca", "chatml", "llama3", "mistral", "gemma", "phi3", "zephyr"
]
Scheduler = Literal["cosine", "linear", "constant"]
Optimizer = Literal["auto", "adamw", "paged_adamw_32bit", "paged_adamw_8bit"]
Objective = Literal["sft", "dpo", "orpo", "kto", "simpo"]

PROMPT_LEARNING_METHODS: frozenset[str] = frozenset({"prefix", "prompt"})
LORA_FAMILY: frozenset[str] = frozenset({"lora", "qlora", "dora", "adalora"})
# the adapter each method saves (adapter_config.json's peft_type; bitfit its own): an init_adapter must be the
# kind the run's method trains. adalora (a budget schedule that cannot restart) and full (no adapter) have none.
ADAPTER_KINDS: dict[str, str] = {
    "lora": "LORA",
    "qlora": "LORA",
    "dora": "LORA (DoRA)",
    "ia3": "IA3",
    "prefix": "PREFIX_TUNING",
    "prompt": "PROMPT_TUNING",
    "bitfit": "bitfit",
}
# what FSDP can shard and save whole: plain weights with adapters beside them (see trainer/distributed.py)
FSDP_METHODS: frozenset[str] = frozenset({"lora", "dora", "full"})


class RopeScaling(BaseModel):
    """Longer context for models with rotary position embeddings (RoPE): transformers' rope_parameters."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["linear", "dynamic", "yarn"] = Field(
        description="linear: positions divided by factor (position interpolation); dynamic: NTK-aware scaling "
        "that only starts past the original context; yarn: YaRN (interpolation by frequency band)."
    )
    factor: float = Field(gt=1.0, description="Context multiplier, e.g. 2.0 for a 4k model trained at 8k.")
    original_max_position_embeddings: int | None = Field(
        default=None, ge=1, description="yarn: the context the model was pre-trained with (default: its own)."
    )


class TrainConfig(BaseModel):
    """A fully described SFT run; `train_config.yaml` in the artifacts is this model, resolved."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what to train on -------------------------------------------------------------------------
    base_model: str = Field(
        description="Local directory of a Hugging Face causal LM (config.json, weights, tokenizer). "
        "A hub id is accepted only when allow_hub_download is true."
    )
    models_dir: str | None = Field(
        default=None,
        description="If set, base_model must resolve to a path inside this folder; anything else is refused.",
    )
    allow_hub_download: bool = Field(
        default=False, description="Allow fetching base_model from the Hugging Face hub when it is not local."
    )
    dataset_path: str = Field(
        description="Alpaca JSON/JSONL (instruction/input/output) or messages JSONL "
        '({"messages": [{"role", "content"}]}); the format is detected per record.'
    )
    output_dir: str = Field(description="Artifacts folder: adapter, metrics, status, checkpoints, summary.")

    # --- method -----------------------------------------------------------------------------------
    method: Method = Field(
        default="lora",
        description="PEFT method, or full: every weight trained, saved as a whole model in model/ (small "
        "models on one device; larger ones with parallelism=fsdp).",
    )
    target_modules: list[str] | None = Field(
        default=None,
        description="Module names to adapt (e.g. q_proj, v_proj). None detects them from the architecture: "
        "every linear layer of the decoder blocks (IA3: keys, values and the MLP down projection).",
    )
    r: int = Field(default=16, ge=1, description="LoRA/DoRA rank; AdaLoRA's initial rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    adalora_target_r: int = Field(default=8, ge=1, description="AdaLoRA: average rank after budget pruning.")
    num_virtual_tokens: int = Field(default=20, ge=1, description="Prefix/prompt tuning: virtual tokens.")
    optimizer: Optimizer = Field(
        default="auto",
        description="auto = paged_adamw_32bit for qlora (bitsandbytes, as in the QLoRA paper), adamw otherwise.",
    )

    # --- objective (trainer/preference.py; docs/training.md "Preference training") -----------------
    objective: Objective = Field(
        default="sft",
        description="sft: supervised next-token loss. dpo, orpo, kto, simpo: preference training on "
        "prompt/chosen/rejected pairs (kto also reads prompt/completion/label rows). The PEFT method "
        "stays `method`.",
    )
    beta: float = Field(
        default=0.1,
        gt=0,
        description="dpo/kto: the KL strength of the implicit reward beta*log(pi/ref). simpo: the reward "
        "scale (2.0 in the SimPO paper). Unused by orpo (see orpo_lambda).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="dpo/simpo: assumed share of flipped preference labels (conservative DPO).",
    )
    orpo_lambda: float = Field(
        default=0.1, gt=0, description="orpo: weight of the odds-ratio term beside the SFT loss."
    )
    simpo_gamma: float = Field(default=0.5, ge=0.0, description="simpo: the target reward margin gamma.")
    kto_desirable_weight: float = Field(
        default=1.0, gt=0, description="kto: weight of the losses of desirable (label true) completions."
    )
    kto_undesirable_weight: float = Field(
        default=1.0, gt=0, description="kto: weight of the losses of undesirable (label false) completions."
    )
    init_adapter: str | None = Field(
        default=None,
        description="An adapter folder to start from (an earlier run's adapter/): two-stage training. SFT "
        "trains it further (its own r, alpha and targets; the earlier run's tokenizer and prompt format when "
        "the folder sits in a run's output_dir). Preference objectives train a "
        "copy of it; dpo/kto take the frozen SFT model as their reference (log-probs computed once before "
        "training). None: a fresh adapter on the base model, whose log-probs with the adapter disabled are "
        "the reference.",
    )

    # --- data and prompt format -------------------------------------------------------------------
    prompt_format: PromptFormatName = Field(
        default="auto",
        description="auto: the tokenizer's chat template when it has one, else alpaca for single-turn "
        "instruction data and ChatML for multi-turn conversations. llama3, mistral, gemma, phi3, zephyr: "
        "that family's built-in chat template (for base models that ship without one).",
    )
    chat_template: str | None = Field(
        default=None,
        description="Your own Jinja chat template (its text, or the path of a file holding it), used instead "
        "of the tokenizer's. Checked before training: it must render system, user and assistant messages, "
        "each reply inside the assistant's span, and never rewrite earlier turns. Needs prompt_format auto "
        "or chat_template.",
    )
    system_prompt: str | None = Field(
        default=None, description="System message prepended to conversations that have none."
    )
    max_seq_len: int = Field(default=2048, ge=8, description="Tokens per sample (and per packed row).")
    packing: bool = Field(
        default=True,
        description="Pack several samples per row with position ids restarting per sample and no attention "
        "across samples. Ignored (with a note in the summary) for prefix/prompt tuning.",
    )
    group_by_length: bool = Field(
        default=True, description="Without packing: batch samples of similar length to cut padding."
    )
    val_fraction: float = Field(default=0.05, ge=0.0, lt=0.9, description="Share of samples held out.")

    # --- optimisation -----------------------------------------------------------------------------
    epochs: float = Field(
        default=3.0, gt=0, description="Passes over the training split (if max_steps <= 0)."
    )
    max_steps: int = Field(default=-1, description="Optimizer steps; > 0 overrides epochs.")
    lr: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    scheduler: Scheduler = Field(default="cosine", description="Learning-rate decay after warmup.")
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0, description="Share of steps for linear warmup.")
    batch_size: int = Field(default=4, ge=1, description="Rows per micro-batch.")
    grad_accum: int = Field(default=4, ge=1, description="Micro-batches per optimizer step.")
    seed: int = Field(default=42, description="Seeds the split, batch order, init and dropout.")

    # --- bookkeeping ------------------------------------------------------------------------------
    logging_steps: int = Field(default=10, ge=1, description="Write a metrics line every N optimizer steps.")
    eval_steps: int = Field(default=100, ge=0, description="Validate every N steps (0: only at the end).")
    save_steps: int = Field(
        default=200, ge=0, description="Checkpoint every N steps (0: only on cancel/end)."
    )
    save_total_limit: int = Field(default=2, ge=1, description="Checkpoints kept (oldest removed first).")
    resume: bool = Field(default=True, description="Continue from the latest checkpoint in output_dir.")
    sample_prompts: int = Field(
        default=5, ge=0, description="Held-out prompts to generate from after training (samples.jsonl)."
    )
    sample_max_new_tokens: int = Field(default=128, ge=1, description="Generation length for samples.")

    # --- hardware ---------------------------------------------------------------------------------
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Compute precision. auto: bf16 on GPUs that support it, fp16 with loss scaling "
        "(torch.amp.GradScaler) on other CUDA GPUs (V100, T4), fp32 on CPU. bf16/fp16: the frozen base in "
        "that dtype, trainable weights kept in fp32, autocast for the matmuls.",
    )
    bf16: bool | Literal["auto"] = Field(
        default="auto",
        description="The older spelling, still read: true = precision bf16, false = fp32, auto = decided "
        "by precision. Refused when it contradicts precision.",
    )
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward.")
    trust_remote_code: bool = Field(
        default=False,
        description="Run the model folder's own Python code (custom architectures). In the service only when "
        "an admin allows it (IF_ALLOW_TRUST_REMOTE_CODE=true).",
    )
    rope_scaling: RopeScaling | None = Field(
        default=None,
        description="RoPE scaling for a longer context, e.g. {type: linear, factor: 2.0}; set on the model's "
        "config at load (training, inference, merge). Refused for models without rotary embeddings.",
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        default="auto", description="auto: flash_attention_2 when installed on CUDA, else sdpa."
    )
    merge: bool = Field(
        default=False,
        description="Also export merged/: the adapter merged into the original 16-bit base "
        "(never into a dequantised 4-bit one). Not possible for prefix/prompt tuning.",
    )

    # --- several GPUs (trainer/distributed.py; docs/training.md "Several GPUs") ---------------------
    gpus: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="GPUs per node the service launches this run on (torchrun --nproc-per-node). The trainer "
        "itself takes its world size from the launcher (WORLD_SIZE); one process when not launched.",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Machines of a multi-node run (torchrun --nnodes). The service launches single-node runs "
        "only; a multi-node run is exported and started under Slurm or Kubernetes.",
    )
    parallelism: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="With several ranks: ddp (every rank holds the whole model) or fsdp (FSDP2 fully_shard: "
        "weights, gradients and optimizer state sharded over the ranks, for models that do not fit one GPU). "
        "Ignored by one process. The global batch is batch_size x grad_accum x ranks.",
    )
    fsdp_cpu_offload: bool = Field(
        default=False, description="fsdp: keep the shards in CPU memory between uses (slower, smaller)."
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.parallelism == "fsdp" and self.method not in FSDP_METHODS:
            raise ValueError(
                f"parallelism=fsdp trains {', '.join(sorted(FSDP_METHODS))}, not method={self.method} "
                "(qlora: FSDP cannot shard bitsandbytes 4-bit weights here; use ddp)"
            )
        if self.fsdp_cpu_offload and self.parallelism != "fsdp":
            raise ValueError("fsdp_cpu_offload needs parallelism=fsdp")
        if self.precision == "fp16" and self.parallelism == "fsdp":
            raise ValueError("precision=fp16 is not supported with parallelism=fsdp (use bf16, fp32 or ddp)")
        if self.merge and self.method in PROMPT_LEARNING_METHODS:
            raise ValueError(
                f"merge is not possible for method={self.method}: virtual tokens have no weights"
            )
        if self.method == "full":
            # full fine-tuning writes a whole model folder (model/): there is no adapter to merge or target
            if self.merge:
                raise ValueError("merge is not possible for method=full: model/ already is the whole model")
            if self.target_modules is not None:
                raise ValueError("target_modules is for adapters: method=full trains every weight")
        if (self.bf16 is True and self.precision not in ("auto", "bf16")) or (
            self.bf16 is False and self.precision == "bf16"
        ):
            raise ValueError(f"bf16={self.bf16} contradicts precision={self.precision}: set precision only")
        if self.method == "adalora" and self.adalora_target_r >= self.r:
            raise ValueError("adalora_target_r must be below r: AdaLoRA prunes from r down to it")
        if self.objective != "sft" and self.method not in LORA_FAMILY - {"adalora"} and self.method != "ia3":
            raise ValueError(
                f"objective={self.objective} trains with lora, qlora, dora or ia3 (an adapter that can be "
                f"switched off for the reference), not method={self.method}"
            )
        if self.objective != "sft" and (self.gpus > 1 or self.nodes > 1):
            raise ValueError(
                f"objective={self.objective} runs on one GPU for now (gpus=1, nodes=1): trainer/preference.py "
                "has no distributed loop yet"
            )
        if self.chat_template is not None:
            if self.prompt_format not in ("auto", "chat_template"):
                raise ValueError(
                    f"chat_template replaces prompt_format={self.prompt_format}: set one of them"
                )
            from trainer.formats import check_chat_template, read_chat_template  # no torch there

            check_chat_template(read_chat_template(self.chat_template))
        if self.init_adapter is not None and self.method == "full":
            raise ValueError(
                "init_adapter is an adapter: method=full continues from an earlier run's model/ as base_model"
            )
        if self.init_adapter is not None and self.method == "adalora":
            raise ValueError(
                "init_adapter cannot continue method=adalora: its rank budget schedule cannot restart"
            )
        return self

    def resolved_base_model(self) -> Path | str:
        """The base model directory (checked against models_dir), or a hub id when downloads are allowed."""
        path = Path(self.base_model).expanduser()
        if self.models_dir is not None:
            root = Path(self.models_dir).expanduser().resolve()
            candidate = path if path.is_absolute() else root / path
            resolved = candidate.resolve()
            if not resolved.is_relative_to(root):
                raise ValueError(f"base_model {self.base_model!r} resolves outside models_dir {str(root)!r}")
            path = resolved
        if path.is_dir():
            return path.resolve()
        if self.allow_hub_download and self.models_dir is None:
            return self.base_model
        raise FileNotFoundError(
            f"base_model {self.base_model!r} is not a local directory"
            + ("" if self.allow_hub_download else " (hub downloads are disabled: allow_hub_download=false)")
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
        return cls.model_validate(data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """YAML or JSON, by extension."""
        if str(path).endswith(".json"):
            data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.model_validate(data)
        return cls.from_yaml(path)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(
            yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
