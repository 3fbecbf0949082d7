"""Data parallelism: the same `python -m trainer CONFIG` as one process or as N ranks under a launcher.

`torchrun --nproc-per-node N -m trainer CONFIG` and `accelerate launch -m trainer CONFIG` both start N copies of
the trainer with RANK, WORLD_SIZE and LOCAL_RANK in their environment; that is how a rank knows it is one. Without
them (or with WORLD_SIZE=1) nothing here starts a process group and the trainer runs exactly as before.

Why N ranks compute the same update as one process over the same global batch
-----------------------------------------------------------------------------
- The plan (trainer/batching.py) is built identically on every rank from the seed. An optimizer step takes the
  next ``grad_accum x world`` micro-batches of it; rank r takes the r-th block of ``grad_accum`` of them. The
  shares are disjoint, cover the step, and depend only on (seed, rank, world): a single process with
  ``grad_accum = G x N`` sees exactly the micro-batches that N ranks with ``grad_accum = G`` see together.
- The loss is a sum over target tokens divided by the step's target count *over all ranks* (one all-reduce of
  the count before the forward passes), so each token weighs the same wherever it lands.
- DDP and FSDP average gradients over ranks; each rank's loss is multiplied by the world size so the average is
  the sum the single process computes. What differs is only floating-point summation order (measured in
  tests/trainer/test_distributed.py: losses agree to 1e-4 relative, adapters to 1e-5 absolute).

Rank 0 alone reads the cancel file and writes status, metrics, checkpoints, the adapter, samples and the summary;
the other ranks hear its decisions through a broadcast, and a barrier follows each write that the others must not
outrun. See docs/training.md, "Several GPUs".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from trainer.batching import MicroBatch
from trainer.reporting import Reporter, State

Parallelism = Literal["ddp", "fsdp"]

# A rank waits this long for the others at a collective before failing (a crashed peer otherwise hangs it
# forever); checkpoints of large models and first-step compilation fit well inside.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """Where this process stands among the ranks of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether this module started the process group (and so ends it)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    # --- collectives (no-ops for one process) ----------------------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks, in float64 (token counts stay exact far past 2**53 tokens)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def from_main(self, flag: bool) -> bool:
        """Rank 0's flag on every rank: one decision, taken where the files are read."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def _comm_device(self) -> torch.device:
        # nccl only moves CUDA tensors; gloo only CPU ones
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # --- the data share --------------------------------------------------------------------------

    def share(self, step_batches: list[MicroBatch]) -> list[MicroBatch]:
        """This rank's contiguous block of one optimizer step's ``grad_accum x world`` micro-batches."""
        per_rank, extra = divmod(len(step_batches), self.size)
        if extra:
            raise ValueError(f"{len(step_batches)} micro-batches do not split over {self.size} ranks")
        return step_batches[self.rank * per_rank : (self.rank + 1) * per_rank]


_world = World()


def world() -> World:
    """The world set up by :func:`start` (one process until then)."""
    return _world


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) when not launched."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} WORLD_SIZE={size}: not a rank of the world")
    return rank, size, local


def start() -> World:
    """Join the launcher's process group (nccl on CUDA, gloo on CPU); one process when not launched."""
    global _world
    rank, size, local = env_world()
    if size == 1:
        _world = World()
        return _world
    owns = False
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # QLoRA's device_map and every .cuda() then land on this rank's GPU
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        owns = True
    _world = World(rank=rank, size=size, local_rank=local, owns_group=owns)
    return _world


def stop() -> None:
    """Leave the process group this module started; the world is one process again."""
    global _world
    if _world.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


# --------------------------------------------------------------------------------------------------
# files: written by rank 0 only


class QuietReporter(Reporter):
    """The reporter of ranks other than 0: they write no status or metrics and never read the cancel file."""

    def status(self, state: State, *, step: int, max_steps: int, error: str | None = None) -> None:
        return None

    def reset_metrics(self, *, keep_up_to_step: int) -> None:
        return None

    def metrics(self, row: dict[str, Any]) -> None:
        return None

    def cancel_requested(self) -> bool:
        return False


def reporter_for(output_dir: Path) -> Reporter:
    return Reporter(output_dir) if _world.is_main else QuietReporter(output_dir)


# --------------------------------------------------------------------------------------------------
# the model


@dataclass
class Engine:
    """How the model trains across ranks: `train_model` is what forward/backward go through."""

    parallelism: Parallelism | None  # None: one process
    train_model: Any
    world: World

    @property
    def sharded(self) -> bool:
        """FSDP: every rank must take part in every forward (evaluation, generation, state gathering)."""
        return self.parallelism == "fsdp"

    def loss_scale(self) -> float:
        """DDP and FSDP average gradients over ranks; scaling each rank's loss by N makes that the sum."""
        return float(self.world.size)

    def accumulate(self, last: bool) -> Any:
        """Context for one micro-batch's backward: DDP skips its all-reduce until the step's last micro-batch."""
        if self.parallelism == "ddp" and not last:
            return self.train_model.no_sync()
        return nullcontext()


def wrap(
    model: Any, *, parallelism: Parallelism, cpu_offload: bool, mixed_bf16: bool, w: World | None = None
) -> Engine:
    """DDP around the model, or FSDP2 (`fully_shard`) of each decoder layer and the root; one process: as is.

    FSDP shards parameters in place, so it must run before the optimizer is built on them.
    """
    w = w or _world
    if not w.enabled:
        return Engine(None, model, w)
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [w.local_rank] if torch.cuda.is_available() else None
        return Engine("ddp", DistributedDataParallel(model, device_ids=ids), w)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if mixed_bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # the root unit is the transformers model itself, not a PEFT wrapper around it: generate() calls its
    # forward directly, and only a unit's own forward gathers its weights (embeddings, final norm, head)
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in decoder_layers(root):
        fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)
    return Engine("fsdp", model, w)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks (each becomes one FSDP unit: one all-gather per layer, freed after use)."""
    found = []
    for module in model.modules():
        layers = getattr(module, "layers", None) or getattr(module, "h", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            found = list(layers)
            break
    if not found:
        raise ValueError("FSDP: found no decoder layer list (model.layers or transformer.h) to shard")
    return found


def full_state(model: Any, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU, on rank 0 (other ranks get {}); a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    names = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not _world.is_main:
        return {}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and (names is None or k in names)}


def full_optimizer_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, whole, on rank 0; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=options)
    return state if _world.is_main else {}


def load_full_state(
    model: Any, optimizer: torch.optim.Optimizer, weights: dict[str, Any], optim: Any
) -> None:
    """Spread full weights and optimizer state (read by every rank) onto this rank's shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=options)


@contextmanager
def main_first(w: World | None = None) -> Iterator[bool]:
    """Rank 0 does the body (yields True there), then every rank meets at a barrier."""
    w = w or _world
    yield w.is_main
    w.barrier()  # not on an exception: the launcher stops every rank when one fails


def is_sharded(model: Any) -> bool:
    """Whether the model's weights are FSDP shards (then every rank must run every forward)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def describe(config: Any, w: World) -> str:
    """The summary's note on how the ranks split the work, and on a world that is not the one asked for."""
    note = (
        f"{w.size} ranks ({config.parallelism}): global batch = batch_size {config.batch_size} x grad_accum "
        f"{config.grad_accum} x {w.size} ranks = {config.batch_size * config.grad_accum * w.size} rows per step"
    )
    asked = config.gpus * config.nodes
    if asked != w.size:
        note += f"; the config asks for {asked} (gpus x nodes), the launcher started {w.size}"
    return note


# --------------------------------------------------------------------------------------------------
# checkpoints: rank 0 writes; under FSDP the shards are gathered first (a collective on every rank)

# trainer_state.json's key for how optimizer.pt is keyed: "name" (whole state by parameter name, written under
# FSDP) or absent (torch's positional state_dict, written by one process or DDP).
OPTIMIZER_KEYS = "optimizer_keys"
# trainer_state.json's key for grad_accum x ranks of the run that wrote it
MICRO_BATCHES_PER_STEP = "micro_batches_per_step"


def save_checkpoint(
    root: Path,
    *,
    engine: Engine,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    keep: int,
) -> None:
    """One checkpoint of the whole trainable state, whatever the world: a run can resume on another number of
    ranks (DDP replicas are identical, FSDP shards are gathered to whole tensors)."""
    from trainer import checkpoint

    w = engine.world
    if engine.sharded:
        weights = full_state(model, trainable_only=True)
        optim = full_optimizer_state(model, optimizer)
        if w.is_main:
            _save_gathered(root, step, weights, optim, scheduler, {**extra, OPTIMIZER_KEYS: "name"}, keep)
    elif w.is_main:
        checkpoint.save_checkpoint(
            root, step=step, model=model, optimizer=optimizer, scheduler=scheduler, extra=extra, keep=keep
        )
    w.barrier()  # a rank that resumes or ends next must find the checkpoint complete


def _save_gathered(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optim: dict[str, Any],
    scheduler: Any,
    extra: dict[str, Any],
    keep: int,
) -> None:
    import json
    import random
    import shutil

    from safetensors.torch import save_file

    from trainer import checkpoint

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / checkpoint.WEIGHTS))
    torch.save(optim, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / checkpoint.STATE).write_text(json.dumps({"step": step, **extra}, indent=2), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint.checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path,
    *,
    engine: Engine,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches_per_step: int,
) -> dict[str, Any]:
    """Every rank reads the same checkpoint; FSDP spreads the whole tensors onto its shards.

    Another world size is fine when grad_accum x ranks stays the same; otherwise the step counter would point
    elsewhere in the plan (samples seen twice or skipped), so it is refused naming the grad_accum that fits.
    """
    import json
    import random

    from safetensors.torch import load_file

    from trainer import checkpoint

    state: dict[str, Any] = json.loads((path / checkpoint.STATE).read_text(encoding="utf-8"))
    saved = state.get(MICRO_BATCHES_PER_STEP)
    if saved is not None and int(saved) != micro_batches_per_step:
        ranks = engine.world.size
        fits = (
            f"grad_accum={int(saved) // ranks}" if int(saved) % ranks == 0 else f"a multiple of {ranks} ranks"
        )
        raise ValueError(
            f"checkpoint {path.name} was written with grad_accum x ranks = {saved} micro-batches per step, "
            f"this run takes {micro_batches_per_step}: resume with {fits} (or start afresh with resume: false)"
        )
    by_name = state.get(OPTIMIZER_KEYS) == "name"
    if not engine.sharded and not by_name:
        return checkpoint.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    if engine.sharded and not by_name:
        raise ValueError(
            f"checkpoint {path} was written without FSDP: resume it with parallelism=ddp (or one process)"
        )
    weights = load_file(str(path / checkpoint.WEIGHTS))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(weights))
    if missing:
        raise ValueError(f"checkpoint {path} does not match this model (missing {missing[:3]}...)")
    # our own files: full unpickling is needed for the optimizer's param groups and the Python RNG state
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    load_full_state(model, optimizer, weights, optim)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    return state
