"""Exports that load as they are: Parquet read back by `datasets`, LLaMA-Factory's dataset_info.json, TRL's
own format helpers, the dataset card, DPO pairs, and the push to a (local stand-in) Hub."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.records.models import Record
from tests.factories import make_dataset, make_project, make_user, token_for

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "license": "cc-by-4.0"},
    {
        "instruction": "Translate to English.",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
    },
    {"instruction": "And 3+3?", "input": "", "output": "6", "history": [["What is 1+1?", "2"]]},
]
# The same three records as chats, as every chat format must carry them.
CHATS = [
    [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate to English.\n\nbonjour"},
        {"role": "assistant", "content": "hello"},
    ],
    [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ],
]
ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5", "system": None, "history": []},
    {
        "instruction": "Translate to English.",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [],
    },
    {
        "instruction": "And 3+3?",
        "input": "",
        "output": "6",
        "system": None,
        "history": [["What is 1+1?", "2"]],
    },
]
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
EXPECTED = {
    "alpaca": ALPACA,
    "sharegpt": [
        {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in c]}
        for c in CHATS
    ],
    "openai": [{"messages": c} for c in CHATS],
    "axolotl": [{"conversations": c} for c in CHATS],
}


@pytest.fixture
def snap(client, db) -> tuple[int, dict[str, str], list[int]]:
    """A snapshot of the three ROWS, imported as alpaca and accepted: (snapshot id, headers, record ids)."""
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")), name="maths & words")
    h = token_for(db, curator)
    body = "\n".join(json.dumps(r) for r in ROWS).encode()
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/import", content=body, params={"format": "alpaca"}, headers=h
    )
    assert resp.status_code == 201, resp.text
    client.post(
        f"/api/v1/datasets/{dataset.id}/records/bulk-status",
        json={"filter": {}, "status": "accepted"},
        headers=h,
    )
    made = client.post(f"/api/v1/datasets/{dataset.id}/snapshots", json={"name": "v1"}, headers=h)
    assert made.status_code == 201, made.text
    ids = [r.id for r in db.query(Record).filter_by(dataset_id=dataset.id).order_by(Record.id)]
    return int(made.json()["id"]), h, ids


def _unzip(raw: bytes, to: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        zf.extractall(to)
        return {n: zf.read(n) for n in zf.namelist()}


def _export(client, sid: int, h: dict[str, str], **params: Any) -> Any:
    resp = client.get(f"/api/v1/snapshots/{sid}/export", params=params, headers=h)
    assert resp.status_code == 200, resp.text
    return resp


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai", "axolotl"])
def test_parquet_export_loads_with_datasets_field_for_field(client, snap, tmp_path, fmt):
    from datasets import load_dataset

    sid, h, ids = snap
    resp = _export(client, sid, h, format=fmt, parquet="true")
    assert resp.headers["content-type"] == "application/zip"
    files = _unzip(resp.content, tmp_path)
    assert set(files) >= {"data/train.parquet", "README.md"}
    ds = load_dataset(
        "parquet", data_files={"train": str(tmp_path / "data/train.parquet")}, cache_dir=str(tmp_path / "c")
    )
    rows = ds["train"].to_list()
    provenance = [
        {
            "id": i,
            "source": "import:alpaca",
            "parent_id": None,
            "job_id": None,
            "teacher_model": None,
            "prompt_hash": None,
        }
        for i in ids
    ]
    assert rows == [{**want, **prov} for want, prov in zip(EXPECTED[fmt], provenance, strict=True)]


def test_parquet_split_is_one_file_per_split_and_seeded(client, snap, tmp_path):
    from datasets import load_dataset

    sid, h, ids = snap
    resp = _export(client, sid, h, format="openai", parquet="true", val_fraction=0.34, seed=7)
    files = _unzip(resp.content, tmp_path)
    assert {n for n in files if n.startswith("data/")} == {"data/train.parquet", "data/validation.parquet"}
    data_files = {s: str(tmp_path / f"data/{s}.parquet") for s in ("train", "validation")}
    ds = load_dataset("parquet", data_files=data_files, cache_dir=str(tmp_path / "c"))
    assert ds["train"].num_rows == 2 and ds["validation"].num_rows == 1
    assert sorted([*ds["train"]["id"], *ds["validation"]["id"]]) == ids
    again = _export(client, sid, h, format="openai", parquet="true", val_fraction=0.34, seed=7).content
    assert _unzip(again, tmp_path / "again")["data/validation.parquet"] == files["data/validation.parquet"]
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train.parquet"},
        {"split": "validation", "path": "data/validation.parquet"},
    ]
    assert "validation fraction 0.34, seed 7" in card


def test_old_single_file_download_is_unchanged(client, snap):
    sid, h, _ = snap
    resp = _export(client, sid, h, format="alpaca")
    assert resp.headers["content-type"].startswith("application/json")
    assert json.loads(resp.content)[1] == {
        "instruction": "Translate to English.",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
    }


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai", "axolotl"])
def test_llamafactory_dataset_info_names_columns_the_file_has(client, snap, tmp_path, fmt):
    """Every column and tag dataset_info.json declares is in the data file, as LLaMA-Factory's loader needs."""
    from datasets import load_dataset

    sid, h, _ = snap
    files = _unzip(_export(client, sid, h, format=fmt, bundle="true").content, tmp_path)
    info = json.loads(files["dataset_info.json"])
    ((name, entry),) = info.items()
    assert name == f"instructforge_snapshot_{sid}"
    assert entry["formatting"] == ("alpaca" if fmt == "alpaca" else "sharegpt")
    data = load_dataset("json", data_files=str(tmp_path / entry["file_name"]), cache_dir=str(tmp_path / "c"))[
        "train"
    ]
    assert set(entry["columns"].values()) <= set(data.column_names)
    if fmt == "alpaca":
        assert entry["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
    else:
        tags = entry["tags"]
        turns = data[0][entry["columns"]["messages"]]
        assert {t[tags["role_tag"]] for t in turns} == {tags["user_tag"], tags["assistant_tag"]}
        assert turns[0][tags["content_tag"]] == "Add 2 and 3."


def test_trl_reads_the_openai_export_as_conversational(client, snap, tmp_path):
    """TRL's own dataset helpers see the `messages` export as conversational data and render it with a
    chat template (a tokenizer built here: nothing is downloaded)."""
    from datasets import load_dataset
    from trl import is_conversational, maybe_apply_chat_template

    sid, h, _ = snap
    _unzip(_export(client, sid, h, format="openai", parquet="true").content, tmp_path)
    ds = load_dataset(
        "parquet", data_files=str(tmp_path / "data/train.parquet"), cache_dir=str(tmp_path / "c")
    )["train"]
    tokenizer = _chat_tokenizer()
    assert all(is_conversational(row) for row in ds)
    text = maybe_apply_chat_template(ds[1], tokenizer)["text"]
    assert text == "<system>You translate.</s><user>Translate to English.\n\nbonjour</s><assistant>hello</s>"


def _chat_tokenizer() -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer


def test_dpo_export_pairs_the_edited_reply_with_the_original(client, db, snap, tmp_path):
    from datasets import load_dataset
    from trl import is_conversational, maybe_apply_chat_template

    sid, h, ids = snap
    rec = db.get(Record, ids[0])
    edit = client.patch(
        f"/api/v1/records/{ids[0]}", json={"version": rec.version, "output": "2 + 3 = 5"}, headers=h
    )
    assert edit.status_code == 200, edit.text
    assert (
        client.get(f"/api/v1/snapshots/{sid}/export", params={"format": "dpo"}, headers=h).status_code == 422
    )
    snap2 = client.post(f"/api/v1/datasets/{rec.dataset_id}/snapshots", json={"name": "v2"}, headers=h).json()
    files = _unzip(_export(client, snap2["id"], h, format="dpo", parquet="true").content, tmp_path)
    assert "dataset_info.json" not in files
    ds = load_dataset(
        "parquet", data_files=str(tmp_path / "data/train.parquet"), cache_dir=str(tmp_path / "c")
    )["train"]
    (row,) = ds.to_list()
    assert row["id"] == ids[0]
    assert row["prompt"] == [{"role": "user", "content": "Add 2 and 3."}]
    assert row["chosen"] == [{"role": "assistant", "content": "2 + 3 = 5"}]
    assert row["rejected"] == [{"role": "assistant", "content": "5"}]
    assert is_conversational(row)
    rendered = maybe_apply_chat_template(row, _chat_tokenizer())
    assert rendered["prompt"] == "<user>Add 2 and 3.</s><assistant>"
    assert rendered["chosen"] == "2 + 3 = 5</s>" and rendered["rejected"] == "5</s>"
    jsonl = _export(client, snap2["id"], h, format="dpo").content.decode().splitlines()
    assert [json.loads(line)["chosen"][0]["content"] for line in jsonl] == ["2 + 3 = 5"]


def test_card_counts_lengths_licences_and_hash(client, snap, tmp_path):
    sid, h, _ = snap
    files = _unzip(_export(client, sid, h, format="alpaca", bundle="true").content, tmp_path)
    assert set(files) == {"data/train.json", "dataset_info.json", "README.md"}
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc-by-4.0"
    assert front["size_categories"] == ["n<1K"] and front["language"] == ["en"]
    assert front["task_categories"] == ["text-generation"]
    snapshot = client.get(f"/api/v1/snapshots/{sid}", headers=h).json()
    assert f"`{snapshot['content_hash']}`" in card
    assert "| import:alpaca | 3 | 100.0% |" in card and "| accepted | 3 | 100.0% |" in card
    # prompt lengths: 12, 28 ("Translate to English." and "bonjour"), the conversation's two user turns 20
    assert "| prompt | 12 | 20 | 20.0 | 28 | 28 |" in card
    assert "| response | 1 | 2 | 2.7 | 5 | 5 |" in card  # "5", "hello", "2" + "6"
    assert "1 records carry no licence field" not in card and "2 records carry no licence field" in card
    assert "No decontaminate job ran on this dataset before the snapshot" in card
    assert "No generation or curation job ran" in card


def test_hostile_names_cannot_break_the_card(client, db, tmp_path):
    curator = make_user(db, "curator")
    evil = 'x: 1\n---\nlicense: mit\n<script>alert("n")</script> | ``` '
    dataset = make_dataset(db, make_project(db, (curator, "curator")), name=evil)
    h = token_for(db, curator)
    client.post(
        f"/api/v1/datasets/{dataset.id}/import",
        content=json.dumps({"instruction": "a", "output": "b", "license": "x\n---\ny: <b>"}).encode(),
        params={"format": "alpaca"},
        headers=h,
    )
    body = {"name": "v1", "description": "<img src=x onerror=alert(1)>", "filter": {"status": ["pending"]}}
    sid = client.post(f"/api/v1/datasets/{dataset.id}/snapshots", json=body, headers=h).json()["id"]
    card = _unzip(_export(client, sid, h, format="openai", bundle="true").content, tmp_path)[
        "README.md"
    ].decode()
    assert card.startswith("---\n") and card.count("\n---\n") == 1
    end = card.index("\n---\n")
    front, body = yaml.safe_load(card[4:end]), card[end + 5 :]
    assert front["pretty_name"] == f"{evil} / v1"
    assert front["license"] == "x\n---\ny: <b>"
    assert "<script>" not in body and "<img" not in body and "<b>" not in body


def test_unknown_export_format_is_a_422(client, snap):
    sid, h, _ = snap
    resp = client.get(
        f"/api/v1/snapshots/{sid}/export", params={"format": "xml", "parquet": "true"}, headers=h
    )
    assert resp.status_code == 422 and "format" in resp.text


# --- push to the Hub, against a local stand-in for its API -------------------------------------------------

HUB_TOKEN = "hf_test_secret_token_0123456789"


@pytest.fixture
def hub(monkeypatch):
    from pydantic import SecretStr

    from app.config import get_settings
    from tests.fake_hub import FakeHub

    with FakeHub.start() as fake:
        monkeypatch.setattr(get_settings(), "hub_endpoint", fake.base_url)
        monkeypatch.setattr(get_settings(), "hub_token", SecretStr(HUB_TOKEN))
        yield fake


def _committed_snapshot(engine) -> tuple[int, dict[str, str]]:
    from sqlalchemy.orm import Session

    from app.records.schemas import RecordFilter
    from app.snapshots import service as snapshots
    from tests.factories import make_records

    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        make_records(db, dataset, 5, status="accepted")
        snap = snapshots.create_snapshot(
            db=db,
            user=curator,
            dataset_id=dataset.id,
            name="v1",
            description="",
            flt=RecordFilter(status=["accepted"]),
        )
        h = token_for(db, curator)
        db.commit()
        return snap.id, h


@pytest.mark.parametrize("backend", ["postgresql"])
def test_push_to_hub_uploads_parquet_and_card_without_leaking_the_token(committed, hub, tmp_path):
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.factories import job_row
    from workers.runner import run_job

    sid, h = _committed_snapshot(committed)
    with TestClient(create_app()) as api:
        resp = api.post(
            f"/api/v1/snapshots/{sid}/hub", json={"repo_id": "alice/maths", "val_fraction": 0.2}, headers=h
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        assert HUB_TOKEN not in resp.text
        assert run_job(job_id) == "succeeded", job_row(committed, job_id).error
        shown = api.get(f"/api/v1/jobs/{job_id}", headers=h)
        assert shown.status_code == 200 and HUB_TOKEN not in shown.text
    job = job_row(committed, job_id)
    assert HUB_TOKEN not in json.dumps(job.params) and job.params["repo_id"] == "alice/maths"
    created = hub.repos["alice/maths"]
    assert created["type"] == "dataset"
    assert created.get("visibility") == "private" or created.get("private") is True
    files = hub.files["alice/maths"]
    assert set(files) == {"README.md", "data/train.parquet", "data/validation.parquet", "dataset_info.json"}
    assert set(hub.authorizations) == {f"Bearer {HUB_TOKEN}"}
    assert hub.validated[0]["configs"][0]["data_files"][1] == {
        "split": "validation",
        "path": "data/validation.parquet",
    }
    (tmp_path / "t.parquet").write_bytes(files["data/train.parquet"])
    (tmp_path / "v.parquet").write_bytes(files["data/validation.parquet"])
    assert (
        pq.read_table(tmp_path / "t.parquet").num_rows + pq.read_table(tmp_path / "v.parquet").num_rows == 5
    )
    assert job.result["commit_url"].startswith(hub.base_url) and job.result["repo_id"] == "alice/maths"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_refused_push_fails_the_job_with_the_token_scrubbed(committed, hub, caplog):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.factories import job_row
    from workers.runner import run_job

    sid, h = _committed_snapshot(committed)
    hub.fail_with = 401
    with TestClient(create_app()) as api:
        job_id = api.post(f"/api/v1/snapshots/{sid}/hub", json={"repo_id": "alice/maths"}, headers=h).json()[
            "id"
        ]
        assert run_job(job_id) == "failed"
    job = job_row(committed, job_id)
    assert "401" in job.error and "refused request" in job.error
    assert HUB_TOKEN not in job.error and HUB_TOKEN not in caplog.text
    assert hub.authorizations  # the stand-in did quote the token back


def test_push_without_a_configured_token_is_a_422_naming_it(client, snap):
    sid, h, _ = snap
    resp = client.post(f"/api/v1/snapshots/{sid}/hub", json={"repo_id": "alice/maths"}, headers=h)
    assert resp.status_code == 422 and "IF_HUB_TOKEN" in resp.json()["detail"]


@pytest.mark.parametrize("repo_id", ["no-owner", "a/b/c", "../x", "a/" + "b" * 200])
def test_push_refuses_a_malformed_repository_id(client, snap, repo_id):
    sid, h, _ = snap
    resp = client.post(f"/api/v1/snapshots/{sid}/hub", json={"repo_id": repo_id}, headers=h)
    assert resp.status_code == 422 and "repo_id" in resp.text


@pytest.mark.parametrize("backend", ["postgresql"])
def test_card_reports_the_decontamination_job_that_ran(committed, tmp_path):
    """A real decontaminate job filters the record copying an evaluation prompt; the card says what it found."""
    from sqlalchemy.orm import Session

    from app.records.schemas import RecordFilter
    from app.snapshots import service as snapshots
    from tests.factories import make_records, run_job_now

    leaked = "Write a limerick about a cat who learns to play the violin in the city orchestra at night."
    with Session(committed) as db:
        curator = make_user(db, "curator")
        project = make_project(db, (curator, "curator"))
        dataset, evals = make_dataset(db, project), make_dataset(db, project)
        make_records(db, dataset, 3, status="accepted")
        make_records(db, dataset, 1, status="accepted", instruction=leaked)
        make_records(db, evals, 1, instruction=leaked)
        db.commit()
        db.expunge(curator)
        ids = (dataset.id, evals.id)
    job = run_job_now(committed, curator, ids[0], "decontaminate", {"eval_dataset_id": ids[1]})
    with Session(committed) as db:
        user = db.merge(curator)
        snap = snapshots.create_snapshot(
            db=db,
            user=user,
            dataset_id=ids[0],
            name="clean",
            description="",
            flt=RecordFilter(status=["accepted"]),
        )
        db.commit()
        card = snapshots.bundle_files(db, snap, fmt="alpaca", val_fraction=0.0, seed=0, parquet=True)[
            "README.md"
        ]
    text = card.decode()
    assert snap.record_count == 3
    assert f"decontaminate job #{job.id} against dataset {ids[1]}" in text
    assert "4 records scanned, 1 copied 1 of its 1 prompts" in text
    assert "0 records in this export still carry that verdict" in text
    assert f"| #{job.id} | decontaminate | succeeded | - |" in text


def test_the_web_process_imports_neither_pyarrow_nor_huggingface_hub():
    """Parquet writing and the Hub client load where they are used (an export, the worker's push job)."""
    from tests.test_layering import _modules_after

    loaded = _modules_after("import app.main; app.main.create_app()")
    assert not {"pyarrow", "huggingface_hub"} & loaded


def test_card_licence_is_the_one_the_sources_name_else_other_or_unknown():
    from app.pipeline.formats.card import license_id

    assert license_id({"Apache-2.0 ": 3}) == "apache-2.0"
    assert license_id({"mit": 1, "cc-by-4.0": 2}) == "other"
    assert license_id({}) == "unknown"
