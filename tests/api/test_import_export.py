from __future__ import annotations

import io
import json
import zipfile

import pytest

from app.pipeline import formats
from app.records.models import Record
from tests.factories import make_dataset, make_project, make_user, token_for


@pytest.fixture
def ds(db, backend):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    return dataset, token_for(db, curator)


def _import(client, dataset, h, body: bytes, **params):
    return client.post(f"/api/v1/datasets/{dataset.id}/import", content=body, params=params, headers=h)


def _count(db, dataset) -> int:
    return db.query(Record).filter_by(dataset_id=dataset.id).count()


def test_import_real_seed_tasks_autodetected(client, db, ds, shared_data):
    dataset, h = ds
    body = (shared_data / "self-instruct" / "seed_tasks.jsonl").read_bytes()
    resp = _import(client, dataset, h, body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["imported"] == 175 and resp.json()["format"] == "self_instruct"
    assert db.query(Record).filter_by(dataset_id=dataset.id, is_classification=True).count() == 26
    assert db.query(Record).filter_by(dataset_id=dataset.id, source="seed").count() == 175


def test_prompt_only_file_imports_as_prompts_awaiting_answers(client, db, ds, shared_data):
    dataset, h = ds
    body = (shared_data / "instructionwild" / "seed_prompts_ch.jsonl").read_bytes()
    resp = _import(client, dataset, h, body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["imported"] == 429 and resp.json()["format"] == "prompts"
    records = db.query(Record).filter_by(dataset_id=dataset.id).all()
    assert {r.output for r in records} == {""} and all(r.instruction for r in records)


def test_multipart_upload_of_sharegpt_keeps_conversations(client, db, ds, shared_data):
    dataset, h = ds
    data = (shared_data / "fastchat" / "dummy_conversation.json").read_bytes()
    resp = client.post(
        f"/api/v1/datasets/{dataset.id}/import", files={"file": ("conv.json", data)}, headers=h
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "sharegpt"
    rec = db.query(Record).filter_by(dataset_id=dataset.id).order_by(Record.id).first()
    assert rec.messages and {m["role"] for m in rec.messages} >= {"user", "assistant"}


def test_one_bad_line_imports_nothing_and_names_line_and_field(client, db, ds):
    dataset, h = ds
    body = b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n'
    resp = _import(client, dataset, h, body, format="alpaca")
    assert resp.status_code == 422
    assert "line 2" in resp.json()["detail"] and "output" in resp.json()["detail"]
    assert _count(db, dataset) == 0


def test_skip_bad_imports_good_lines_and_lists_bad_ones(client, db, ds):
    dataset, h = ds
    body = b'{"instruction": "a", "output": "b"}\n{not json\n{"instruction": "c", "output": "d"}\n'
    resp = _import(client, dataset, h, body, format="alpaca", skip_bad="true")
    assert resp.status_code == 201
    assert resp.json()["imported"] == 2 and [b["line"] for b in resp.json()["bad"]] == [2]
    assert _count(db, dataset) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', "line 2"),
        (b'{"instruction": ["x"], "output": "b"}\n', "instruction"),
        (b'{"input": "only input"}\n', "instruction"),
        (b'{"instruction": "\xff\xfe bad utf8", "output": "b"}\n', "UTF-8"),
        (b'{"instruction": ' + b"[" * 100_000 + b"]" * 100_000 + b', "output": "x"}\n', "nest"),
        (b"this is not json at all\n", "line 1"),
        (b'{"foo": 1, "bar": 2}\n', "format"),
    ],
    ids=[
        "malformed",
        "wrong-type",
        "missing-field",
        "invalid-utf8",
        "json-bomb",
        "not-json",
        "unknown-format",
    ],
)
def test_bad_input_is_a_clear_4xx_never_a_500(client, db, ds, body, needle):
    dataset, h = ds
    resp = _import(client, dataset, h, body)
    assert 400 <= resp.status_code < 500, resp.text
    assert needle.lower() in resp.json()["detail"].lower(), resp.json()
    assert _count(db, dataset) == 0


def test_huge_single_field_is_refused_by_field_limit(client, db, ds, monkeypatch):
    from app.config import get_settings

    dataset, h = ds
    monkeypatch.setattr(get_settings(), "import_inline_max_bytes", 50_000_000)
    body = json.dumps({"instruction": "x" * 10_000_000, "output": "b"}).encode()
    resp = _import(client, dataset, h, body, format="alpaca")
    assert resp.status_code in (413, 422) and "instruction" in resp.json()["detail"]
    assert _count(db, dataset) == 0


def test_upload_over_limit_is_413(client, db, ds, monkeypatch):
    from app.config import get_settings

    dataset, h = ds
    monkeypatch.setattr(get_settings(), "max_upload_mb", 0.001)
    resp = _import(client, dataset, h, b'{"instruction": "a", "output": "b"}\n' * 100)
    assert resp.status_code == 413 and "limit" in resp.json()["detail"]


def _seed_accept(client, db, ds, shared_data) -> int:
    dataset, h = ds
    body = (shared_data / "codealpaca" / "code_alpaca_2k.json").read_bytes()
    assert _import(client, dataset, h, body).status_code == 201
    client.post(
        f"/api/v1/datasets/{dataset.id}/records/bulk-status",
        json={"filter": {}, "status": "accepted"},
        headers=h,
    )
    snap = client.post(f"/api/v1/datasets/{dataset.id}/snapshots", json={"name": "v1"}, headers=h)
    assert snap.status_code == 201, snap.text
    return int(snap.json()["id"])


def test_snapshot_is_immutable_and_hashed(client, db, ds, shared_data):
    dataset, h = ds
    sid = _seed_accept(client, db, ds, shared_data)
    snap = client.get(f"/api/v1/snapshots/{sid}", headers=h).json()
    assert snap["record_count"] == 2017 and len(snap["content_hash"]) == 64
    assert snap["stats"]["by_status"] == {"accepted": 2017}
    assert sum(snap["stats"]["max_rouge_l_hist"].values()) == 2017
    assert sum(snap["stats"]["prompt_chars_hist"].values()) == 2017
    rec = db.query(Record).filter_by(dataset_id=dataset.id).order_by(Record.id).first()
    client.patch(
        f"/api/v1/records/{rec.id}", json={"version": rec.version, "output": "changed later"}, headers=h
    )
    exported = json.loads(
        client.get(f"/api/v1/snapshots/{sid}/export", params={"format": "alpaca"}, headers=h).content
    )
    assert exported[0]["output"] != "changed later"
    s2 = client.post(f"/api/v1/datasets/{dataset.id}/snapshots", json={"name": "v2"}, headers=h).json()
    assert s2["content_hash"] != snap["content_hash"]
    diff = client.get(f"/api/v1/snapshots/{sid}/diff/{s2['id']}", headers=h).json()
    assert diff["changed"] == [rec.id] and diff["added"] == [] and diff["removed"] == []


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai", "alpaca_jsonl"])
def test_export_loads_back_identically(client, db, ds, shared_data, fmt):
    dataset, h = ds
    sid = _seed_accept(client, db, ds, shared_data)
    body = client.get(f"/api/v1/snapshots/{sid}/export", params={"format": fmt}, headers=h).content
    parsed, bad = formats.parse_all(io.BytesIO(body), fmt={"alpaca_jsonl": "alpaca"}.get(fmt, fmt))
    assert not bad and len(parsed) == 2017
    originals = db.query(Record).filter_by(dataset_id=dataset.id).order_by(Record.id).all()
    for rec, back in zip(originals, parsed, strict=True):
        if fmt.startswith("alpaca"):
            assert (back.instruction, back.input, back.output) == (rec.instruction, rec.input, rec.output)
        else:
            as_dict = {
                "instruction": back.instruction,
                "input": back.input,
                "output": back.output,
                "system": back.system,
                "messages": back.messages,
            }
            assert formats.to_messages(as_dict) == formats.to_messages(
                {
                    "instruction": rec.instruction,
                    "input": rec.input,
                    "output": rec.output,
                    "system": None,
                    "messages": None,
                }
            )


def test_export_split_is_seeded_and_complete(client, db, ds, shared_data):
    _, h = ds
    sid = _seed_accept(client, db, ds, shared_data)

    def parts(seed):
        raw = client.get(
            f"/api/v1/snapshots/{sid}/export",
            params={"format": "openai", "val_fraction": 0.1, "seed": seed},
            headers=h,
        ).content
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return {n: zf.read(n).decode().splitlines() for n in zf.namelist()}

    a, b, c = parts(1), parts(1), parts(2)
    assert a == b and a != c
    assert len(a["train.jsonl"]) + len(a["validation.jsonl"]) == 2017
    assert 150 <= len(a["validation.jsonl"]) <= 260


def test_nul_characters_are_refused_with_line_and_field(client, db, ds):
    dataset, h = ds
    body = b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "bad \\u0000 nul"}\n'
    resp = _import(client, dataset, h, body, format="alpaca")
    assert resp.status_code == 422 and "line 2" in resp.json()["detail"] and "output" in resp.json()["detail"]
    assert _count(db, dataset) == 0
    rec_resp = _import(client, dataset, h, b'{"instruction": "a", "output": "b"}\n', format="alpaca")
    assert rec_resp.status_code == 201
    rec = db.query(Record).filter_by(dataset_id=dataset.id).one()
    edit = client.patch(f"/api/v1/records/{rec.id}", json={"version": 1, "output": "x\u0000y"}, headers=h)
    assert edit.status_code == 422 and "NUL" in edit.json()["detail"]


def test_the_api_accepts_exactly_the_formats_the_readers_know_plus_auto():
    """The import endpoint's `format` choices are a Literal (for the OpenAPI enum); the readers' list is a
    tuple: a format added to one and not the other would be refused by the API or unreadable."""
    from typing import get_args

    from app.imports.schemas import FormatName

    assert get_args(FormatName) == ("auto", *formats.FORMATS)
