"""Several ranks on CPU (gloo) under the real torchrun: same curve and adapter as one process, resume, cancel.

Tolerances: a step's loss is the same sum in another order (ranks add their share, then the all-reduce adds the
ranks), so losses agree to 1e-4 relative and adapter weights to 1e-5 absolute after 4 steps at lr 1e-3; a
wrong share, count or scale is off by far more (a whole micro-batch, or a factor of 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from trainer.checkpoint import checkpoint_dirs
from trainer.config import TrainConfig
from trainer.distributed import World
from trainer.run import main, plan_training

REPO = Path(__file__).resolve().parents[2]


def _config(base_model: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "base_model": str(base_model),
        "dataset_path": str(data),
        "output_dir": str(out),
        "max_seq_len": 256,
        "batch_size": 2,
        "grad_accum": 2,
        "max_steps": 4,
        "lr": 1e-3,
        "warmup_ratio": 0.0,
        "val_fraction": 0.15,
        "logging_steps": 1,
        "eval_steps": 0,
        "save_steps": 2,
        "save_total_limit": 5,
        "sample_prompts": 1,
        "sample_max_new_tokens": 8,
        "gradient_checkpointing": False,
        "dropout": 0.0,  # dropout masks are drawn per rank: with them the curves would differ by design
        "r": 8,
        "alpha": 16,
    }
    values.update(overrides)
    return TrainConfig(**values)


def _torchrun(config: TrainConfig, ranks: int) -> subprocess.Popen[str]:
    path = Path(config.output_dir).with_suffix(".yaml")
    config.to_yaml(path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.Popen(
        [*cmd, "-m", "trainer", str(path)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def _status(out: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((out / "status.json").read_text(encoding="utf-8"))
    return status


def _adapter(out: Path) -> dict[str, Any]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _same_curve(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-4), (g, w)
        assert g["tokens"] == w["tokens"]  # every rank's tokens counted once
        if "eval_loss" in w:
            assert g["eval_loss"] == pytest.approx(w["eval_loss"], rel=1e-4)


def _same_adapter(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert (got[name] - tensor).abs().max().item() < 1e-5, name


def test_ranks_share_each_step_disjointly_and_cover_it():
    config = _config(Path("."), Path("."), Path("."), batch_size=2, grad_accum=2, max_steps=-1, epochs=1)
    lengths = [10 + i % 7 for i in range(40)]
    one, steps_one, _ = plan_training(config.model_copy(update={"grad_accum": 4}), lengths, packing=False)
    two, steps_two, _ = plan_training(config, lengths, packing=False, ranks=2)
    assert one == two and steps_one == steps_two  # grad_accum x ranks equal: the same global plan
    for start in range(0, len(two), 4):
        step = two[start : start + 4]
        shares = [World(rank=r, size=2).share(step) for r in range(2)]
        assert shares[0] + shares[1] == step
        rows = [i for share in shares for mb in share for row in mb for i in row]
        assert len(rows) == len(set(rows)) == 8
    assert steps_two == 5  # 40 samples / (2 rows x 2 micro-batches x 2 ranks), rounded up


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, base_model: Path, alpaca_file: Path) -> TrainConfig:
    """One process, global batch 2 rows x 2 micro-batches."""
    config = _config(base_model, alpaca_file, tmp_path_factory.mktemp("single") / "run")
    assert main(config).state == "succeeded"
    return config


def test_two_ranks_reach_the_single_process_curve_and_adapter_and_resume_as_one(
    single_run, base_model, alpaca_file, tmp_path
):
    config = _config(base_model, alpaca_file, tmp_path / "ddp", grad_accum=1, gpus=2)
    proc = _torchrun(config, 2)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    out, ref = Path(config.output_dir), Path(single_run.output_dir)

    rows = _metrics(out)
    assert len(rows) == 4  # written once (rank 0), not once per rank
    _same_curve(rows, _metrics(ref))
    _same_adapter(_adapter(out), _adapter(ref))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens_seen"] == json.loads((ref / "summary.json").read_text())["tokens_seen"]
    assert any(n.startswith("2 ranks (ddp)") for n in summary["notes"])
    assert len((out / "samples.jsonl").read_text().splitlines()) == 1
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step-00000002"]

    # resume the two-rank checkpoint in one process (grad_accum 2: the same global batch): same end
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(out, resumed_dir)
    shutil.rmtree(resumed_dir / "adapter")
    with pytest.raises(ValueError, match="resume with grad_accum=2"):  # a step of 1 would revisit samples
        main(_config(base_model, alpaca_file, resumed_dir, grad_accum=1))
    resumed = main(_config(base_model, alpaca_file, resumed_dir))
    assert resumed.resumed_from_step == 2 and resumed.state == "succeeded"
    _same_curve(_metrics(resumed_dir), _metrics(ref))
    _same_adapter(_adapter(resumed_dir), _adapter(ref))


def test_fsdp_ranks_follow_one_process_until_a_cancel_stops_both_and_one_process_resumes_their_checkpoint(
    base_model, alpaca_file, tmp_path
):
    """One launch proves four things: FSDP's curve is the single-process one, rank 0's cancel stops every rank,
    the gathered checkpoint is whole, and one process resumes it (a different world size) on the same curve."""
    common: dict[str, Any] = {
        "scheduler": "constant",
        "save_steps": 0,
        "sample_prompts": 0,
        "val_fraction": 0.0,
    }
    config = _config(
        base_model, alpaca_file, tmp_path / "fsdp", grad_accum=1, parallelism="fsdp", max_steps=500, **common
    )
    out = Path(config.output_dir)
    proc = _torchrun(config, 2)
    deadline = time.monotonic() + 240
    while not _metrics(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    (out / "CANCEL").touch()
    output, _ = proc.communicate(timeout=240)  # torchrun returns once every rank has exited
    status = _status(out)
    assert status["state"] == "cancelled", output
    stopped = status["step"]
    assert 1 <= stopped < 500
    # torchrun exits 1 when a rank exits 3 (cancelled); the service reads the state from status.json
    assert proc.returncode == 1 and "exitcode  : 3" in output
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == [f"step-{stopped:08d}"]
    assert not (out / "adapter").exists()

    # the reference: one process, grad_accum 2 (the same global batch), one step further; a constant learning
    # rate and a plan that only grows at its end make its first steps those of the 500-step run
    ref = _config(base_model, alpaca_file, tmp_path / "one", max_steps=stopped + 1, **common)
    assert main(ref).state == "succeeded"
    _same_curve(_metrics(out), _metrics(Path(ref.output_dir))[:stopped])

    (out / "CANCEL").unlink()
    resumed = main(_config(base_model, alpaca_file, out, max_steps=stopped + 1, **common))
    assert resumed.resumed_from_step == stopped and resumed.state == "succeeded"
    _same_curve(_metrics(out), _metrics(Path(ref.output_dir)))
    _same_adapter(_adapter(out), _adapter(Path(ref.output_dir)))


def test_fsdp_refuses_qlora_and_offload_needs_fsdp(base_model, alpaca_file, tmp_path):
    with pytest.raises(ValueError, match="parallelism=fsdp"):
        _config(base_model, alpaca_file, tmp_path, method="qlora", parallelism="fsdp")
    with pytest.raises(ValueError, match="fsdp_cpu_offload needs parallelism=fsdp"):
        _config(base_model, alpaca_file, tmp_path, fsdp_cpu_offload=True)
