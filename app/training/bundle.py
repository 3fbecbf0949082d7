"""A training run's launch bundle: what `POST /training-runs` would train, packed to be started elsewhere
(Slurm, Kubernetes, any GPU box) instead of on a gpu worker. No torch here.

The bundle (a .tar.gz, one folder `instructforge-run/`) holds:
- `train_config.yaml`: the resolved TrainConfig, every path relative to the folder (the trainer resolves them
  against its working directory, and launch.sh runs it from the folder): `dataset_path: dataset.jsonl`,
  `output_dir: output`, `models_dir: models`, `base_model: <name>` (the models directory's folder name);
- `dataset.jsonl`: the snapshot written exactly as a run's (app/training/jobs.write_dataset);
- `init_run/`: with continue_from, the earlier run's adapter (`init_run/adapter`) beside its tokenizer and prompt
  format, laid out as in its run folder, so the trainer continues with the same tokens
  (trainer/methods.init_adapter_run_dir);
- `launch.sh`: the trainer under torchrun with the nodes and GPUs asked, rendezvous at MASTER_ADDR;
- `README.txt`: how to run it.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import User
from app.training import service
from app.training.jobs import write_dataset
from trainer.contract import PROMPT_FORMAT_FILE

if TYPE_CHECKING:
    from app.snapshots.models import Snapshot
    from trainer.config import TrainConfig

FOLDER = "instructforge-run"
CONFIG_FILE = "train_config.yaml"
DATASET_FILE = "dataset.jsonl"
INIT_RUN_FOLDER = "init_run"
# The files of an earlier run's folder that the trainer reads beside its adapter: its tokenizer (with the tokens
# it added) and prompt format. Not its data (dataset.jsonl, samples.jsonl) nor its checkpoints.
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template", "vocab", "merges")
MODELS_FOLDER = "models"
OUTPUT_FOLDER = "output"


def launch_script(*, nodes: int, gpus: int, name: str) -> str:
    """launch.sh: `python -m trainer` for one GPU, torchrun otherwise. Several nodes rendezvous (c10d) at
    MASTER_ADDR:MASTER_PORT, which Slurm scripts and Kubernetes indexed Jobs set (docs/training.md)."""
    head = [
        "#!/usr/bin/env bash",
        f"# {name}: {nodes} node(s) x {gpus} GPU(s). Run from anywhere; the same command on every node.",
        "# Env: PYTHON (default python), MODELS_DIR (linked as ./models when that is missing),",
        "#      MASTER_ADDR (the first node), MASTER_PORT (29500) and RDZV_ID (Slurm: SLURM_JOB_ID) for several",
        "#      nodes; the c10d rendezvous numbers the nodes itself (no NODE_RANK needed).",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'PYTHON="${PYTHON:-python}"',
        f'if [ ! -e {MODELS_FOLDER} ] && [ -n "${{MODELS_DIR:-}}" ]; then ln -sfn "$MODELS_DIR" {MODELS_FOLDER} || true; fi',
    ]
    trainer = f"-m trainer {CONFIG_FILE}"
    if nodes <= 1 and gpus <= 1:
        return "\n".join([*head, f'exec "$PYTHON" {trainer}', ""])
    if nodes <= 1:
        run = f'exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node={gpus} {trainer}'
        return "\n".join([*head, run, ""])
    rdzv_id = name  # [a-z0-9-] only: the snapshot id, method and objective (Literal fields)
    return "\n".join(
        [
            *head,
            ': "${MASTER_ADDR:?set MASTER_ADDR to the first node (docs/training.md, Several machines)}"',
            'MASTER_PORT="${MASTER_PORT:-29500}"',
            f'RDZV_ID="${{RDZV_ID:-${{SLURM_JOB_ID:-{rdzv_id}}}}}"',
            f'exec "$PYTHON" -m torch.distributed.run --nnodes={nodes} --nproc-per-node={gpus} '
            '--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" '
            f'--rdzv-id="$RDZV_ID" {trainer}',
            "",
        ]
    )


def _add_init_run(tar: tarfile.TarFile, adapter: Path) -> None:
    """The earlier run's adapter, and its tokenizer and prompt format when its run folder has them."""
    tar.add(adapter, f"{FOLDER}/{INIT_RUN_FOLDER}/{adapter.name}")
    for path in sorted(adapter.parent.iterdir()):
        if path.is_file() and (path.name == PROMPT_FORMAT_FILE or path.name.startswith(TOKENIZER_PREFIXES)):
            tar.add(path, f"{FOLDER}/{INIT_RUN_FOLDER}/{path.name}")


def readme(*, nodes: int, gpus: int, base_model: str, snapshot_id: int, records: int) -> str:
    return f"""InstructForge training run bundle: snapshot {snapshot_id} ({records} training rows), base model
{base_model}, {nodes} node(s) x {gpus} GPU(s).

1. Unpack it on storage every node sees (a shared filesystem):  tar xzf BUNDLE.tar.gz
2. Put the base model beside the config: {FOLDER}/{MODELS_FOLDER}/{base_model} (a symlink to your models
   folder will do: ln -s /shared/models {FOLDER}/{MODELS_FOLDER}, or set MODELS_DIR=/shared/models).
3. Install the trainer (pip install 'instructforge[train]') in the Python that PYTHON names (default: python).
4. Start it: bash {FOLDER}/launch.sh on one machine; with several nodes, the same command on every node with
   MASTER_ADDR set to the first node's address (Slurm srun and Kubernetes examples: docs/training.md,
   "Several machines").

The adapter, metrics, checkpoints and summary are written to {FOLDER}/{OUTPUT_FOLDER}/ (rank 0 writes them);
run launch.sh again to resume from the last checkpoint. train_config.yaml is a TrainConfig (docs/training.md):
its paths are relative to this folder, which launch.sh runs from.
"""


def build_bundle(*, db: Session, user: User, body: dict[str, Any]) -> Path:
    """Validate the request as POST /training-runs does (nodes > 1 and any GPU count allowed: they are the
    cluster's), write the bundle to a temporary .tar.gz and return its path (the caller deletes it). Audited."""
    snap, dataset, config = service.validate_run(db=db, user=user, launched=False, **body)
    work = Path(tempfile.mkdtemp(prefix="if-bundle-"))
    try:
        return _write(
            db=db, user=user, work=work, snap=snap, project_id=dataset.project_id, config=config, body=body
        )
    except BaseException:
        remove(work)
        raise


def remove(path: Path) -> None:
    """Delete a bundle's temporary folder (the bundle, or the folder itself) once it has been sent."""
    shutil.rmtree(path if path.is_dir() else path.parent, ignore_errors=True)


def _write(
    *,
    db: Session,
    user: User,
    work: Path,
    snap: Snapshot,
    project_id: int,
    config: TrainConfig,
    body: dict[str, Any],
) -> Path:
    adapter = Path(config.init_adapter) if config.init_adapter else None
    name = f"snapshot-{snap.id}-{config.method}-{config.objective}"
    data = work / DATASET_FILE
    records = write_dataset(db, snapshot_id=snap.id, objective=config.objective, path=data)
    relative = config.model_dump(mode="json") | {
        "base_model": body["base_model"],
        "models_dir": MODELS_FOLDER,
        "dataset_path": DATASET_FILE,
        "output_dir": OUTPUT_FOLDER,
        "init_adapter": f"{INIT_RUN_FOLDER}/{adapter.name}" if adapter is not None else None,
        "resume": True,
    }
    config = type(config).model_validate(relative)  # checked again: what the trainer will read
    config.to_yaml(work / CONFIG_FILE)
    texts = {
        "launch.sh": launch_script(nodes=config.nodes, gpus=config.gpus, name=name),
        "README.txt": readme(
            nodes=config.nodes,
            gpus=config.gpus,
            base_model=body["base_model"],
            snapshot_id=snap.id,
            records=records,
        ),
    }
    target = work / f"{name}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(work / CONFIG_FILE, f"{FOLDER}/{CONFIG_FILE}")
        tar.add(data, f"{FOLDER}/{DATASET_FILE}")
        for file_name, text in texts.items():
            raw = text.encode("utf-8")
            info = tarfile.TarInfo(f"{FOLDER}/{file_name}")
            info.size, info.mtime = len(raw), int(time.time())
            info.mode = 0o755 if file_name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(raw))
        if adapter is not None:
            _add_init_run(tar, adapter)
    for leftover in (data, work / CONFIG_FILE):
        leftover.unlink()
    audit.record(
        db=db,
        user_id=user.id,
        action="training.export",
        entity_type="snapshot",
        entity_id=snap.id,
        project_id=project_id,
        detail={
            "method": config.method,
            "objective": config.objective,
            "gpus": config.gpus,
            "nodes": config.nodes,
        },
    )
    db.commit()
    return target
