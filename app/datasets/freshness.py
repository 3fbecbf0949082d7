"""Which datasets a transaction changed, so the dataset page's cached stats are never older than the last change.

The dataset page's stats (app.review.insights.dataset_stats) scan every record; at 100,000 records that is
about a second, so they are cached (the `dataset_stats_cache` table) under a *stamp* read before they are
computed: the dataset's `records_rev`, its record count and its highest record id. A cached figure is used
only while the stamp is unchanged, so it is at most as old as the last change. Two kinds of write move it:

- **Inserts** raise the record count (records are never deleted one by one; a dataset goes with its records).
  That holds whoever inserts, the import's raw COPY included, which SQLAlchemy never sees: no writer has to
  cooperate. The count is in the stamp rather than a counter bumped by inserts for that reason.
- **Updates and deletes** go through SQLAlchemy (ORM flushes, `session.execute`, `session.connection()
  .execute`): `before_execute` below sees each one on the `records` table that sets a column the stats read
  (`STATS_COLUMNS`; taking review locks or writing advice changes nothing shown) and notes its datasets on the
  connection: a `records.dataset_id = x` in the statement, else the `records.id` values it names (looked up
  at commit), else "every dataset". Just before the session commits, each noted dataset's `records_rev` goes
  up by one, in the same transaction as the change, so the change and the new stamp become visible together.

Why bump at commit rather than where the change happens (a trigger, or an UPDATE beside each write): the
dataset row is then locked only for the commit itself. Taken at the first write, it would be held for the
rest of the transaction, and two transactions that each changed a record the other then wanted would
deadlock (a curation batch and a reviewer, say). Taken last, by a transaction that then only commits, it
can make a writer wait a moment, never deadlock.

Why the stamp is read before the stats are computed: a change committed in between makes the stored figures
newer than their stamp, which costs one extra computation on the next view; the other order could store old
figures under the new stamp and keep them.

A transaction on a bare connection (`engine.begin()`) is settled the same way by the connection's commit
event. Writes SQLAlchemy never sees (raw DBAPI cursors) must be inserts: an update made that way would not
move the stamp. Textual SQL (`text("UPDATE records ...")`) is not parsed either; the two such statements in
the code base only take row locks (`SET version = version`) and change no figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table, event, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.dml import Delete, Update, UpdateBase
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnElement

from app.datasets.models import Dataset
from app.records.models import Record

# The record columns the dataset page's cached figures read (its stats, near-duplicate groups and flagged
# count). An update of any other column (review locks, advice, tags, ratings, reviewed_by, version) leaves
# every figure as it was and keeps the cache.
STATS_COLUMNS = frozenset(
    {
        "dataset_id",
        "status",
        "source",
        "instruction",
        "input",
        "output",
        "label",
        "nn_score",
        "meta",
        "job_id",
        "flagged",
        "nn_record_id",
    }
)
ALL = "all"
_KEY = "if_touched_datasets"
_IDS_PER_LOOKUP = 5_000
_RECORDS: Table = Record.__table__  # type: ignore[assignment]


def _is_records(table: Any) -> bool:
    # By name: an ORM statement (`update(Record)` through a session) carries an annotated copy of the table.
    return getattr(table, "name", None) == _RECORDS.name


def _noted(conn: Connection) -> dict[str, set[Any]]:
    found: dict[str, set[Any]] = conn.info.setdefault(_KEY, {"datasets": set(), "records": set()})
    return found


def _set_columns(stmt: Update, param_sets: Sequence[Mapping[str, Any]]) -> set[str]:
    """The columns an UPDATE sets: its VALUES, or (an ORM flush builds a bare UPDATE) its parameters' keys."""
    values = getattr(stmt, "_values", None) or {}
    names = {str(getattr(k, "key", k)) for k in values}
    for params in param_sets:
        names.update(params)
    return names


def _values_of(bind: BindParameter[Any], param_sets: Sequence[Mapping[str, Any]]) -> list[Any] | None:
    """The value(s) a bound parameter takes in this execution; None when it cannot be known."""
    if bind.key in (param_sets[0] if param_sets else {}):
        values = [p[bind.key] for p in param_sets]
    elif bind.callable is None and bind.value is not None:
        values = [bind.value]
    else:
        return None
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list | tuple) else [v])
    return flat


def _comparisons(where: ColumnElement[Any], column: str) -> Iterable[BinaryExpression[Any]]:
    """`records.<column> = :x` and `records.<column> IN (...)` anywhere in the WHERE (subqueries too)."""
    for node in visitors.iterate(where):
        if not isinstance(node, BinaryExpression) or node.operator not in (operators.eq, operators.in_op):
            continue
        left = node.left
        if _is_records(getattr(left, "table", None)) and getattr(left, "name", None) == column:
            yield node


def _named(
    where: ColumnElement[Any], column: str, param_sets: Sequence[Mapping[str, Any]]
) -> set[int] | None:
    """The values the WHERE compares `records.<column>` to; None when it names none or one is unknowable."""
    found: set[int] = set()
    compared = False
    for cmp in _comparisons(where, column):
        values = _values_of(cmp.right, param_sets) if isinstance(cmp.right, BindParameter) else None
        if values is None:
            return None
        compared = True
        found.update(int(v) for v in values)
    return found if compared else None


def _note(conn: Connection, stmt: UpdateBase, param_sets: Sequence[Mapping[str, Any]]) -> None:
    noted = _noted(conn)
    where = getattr(stmt, "whereclause", None)
    datasets = _named(where, "dataset_id", param_sets) if where is not None else None
    if datasets is not None:
        noted["datasets"].update(datasets)
        return
    records = _named(where, "id", param_sets) if where is not None else None
    if records is not None:
        noted["records"].update(records)
        return
    noted["datasets"].add(ALL)


@event.listens_for(Engine, "before_execute")
def _before_execute(
    conn: Connection,
    clauseelement: Any,
    multiparams: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    execution_options: Mapping[str, Any],
) -> None:
    # Inserts need nothing: they change the record count, which is part of the stamp.
    if not isinstance(clauseelement, Update | Delete) or not _is_records(clauseelement.table):
        return
    param_sets = list(multiparams) or ([params] if params else [])
    if isinstance(clauseelement, Update) and not _set_columns(clauseelement, param_sets) & STATS_COLUMNS:
        return
    _note(conn, clauseelement, param_sets)


@event.listens_for(Engine, "rollback")
def _forget(conn: Connection) -> None:
    conn.info.pop(_KEY, None)


def _datasets_of_records(conn: Connection, record_ids: set[int]) -> set[int]:
    ids = sorted(record_ids)
    found: set[int] = set()
    for start in range(0, len(ids), _IDS_PER_LOOKUP):
        chunk = ids[start : start + _IDS_PER_LOOKUP]
        found.update(conn.scalars(select(Record.dataset_id).where(Record.id.in_(chunk)).distinct()))
    return found


def bump(conn: Connection, dataset_ids: Iterable[int | str]) -> None:
    """Move the stats stamp of these datasets (or of every dataset, for `ALL`)."""
    ids = set(dataset_ids)
    if not ids:
        return
    stmt = update(Dataset).values(records_rev=Dataset.records_rev + 1)
    if ALL not in ids:
        stmt = stmt.where(Dataset.id.in_(sorted(int(i) for i in ids)))
    conn.execute(stmt)


def _settle(conn: Connection) -> None:
    """Bump what this connection's transaction changed; the last thing it does before COMMIT."""
    noted = conn.info.pop(_KEY, None)
    if not noted:
        return
    datasets: set[int | str] = set(noted["datasets"])
    if noted["records"] and ALL not in datasets:
        datasets |= _datasets_of_records(conn, noted["records"])
    bump(conn, datasets)


def _known_to(session: Session, conn: Connection) -> None:
    """Records the session holds already name their dataset: no look-up for those (a review decision's)."""
    noted = conn.info.get(_KEY)
    if not noted or not noted["records"]:
        return
    for rid in list(noted["records"]):
        record = session.identity_map.get(session.identity_key(Record, rid))
        if isinstance(record, Record) and "dataset_id" in record.__dict__:
            noted["datasets"].add(record.dataset_id)
            noted["records"].discard(rid)


@event.listens_for(Session, "before_commit")
def _bump_before_commit(session: Session) -> None:
    # Also where a session's COMMIT is only a savepoint's release (a test's outer transaction).
    if session.in_transaction():
        session.flush()  # the last changes' statements are noted before the stamp moves
        conn = session.connection()
        _known_to(session, conn)
        _settle(conn)


@event.listens_for(Engine, "commit")
def _bump_at_commit(conn: Connection) -> None:
    # A transaction on a bare connection (`engine.begin()`), which no session event sees; after a
    # session's before_commit there is nothing left here.
    _settle(conn)


def stamp(db: Session, dataset_id: int) -> str | None:
    """What a cached figure of this dataset was computed at; any committed change to its records changes it.
    None while this session itself has changed records it has not committed: its figures are its own."""
    rev = db.scalar(select(Dataset.records_rev).where(Dataset.id == dataset_id)) or 0
    count, top = db.execute(
        select(func.count(Record.id), func.max(Record.id)).where(Record.dataset_id == dataset_id)
    ).one()
    if db.connection().info.get(_KEY):
        return None
    return f"{rev}:{count}:{top or 0}"
