"""Job messages: each is stamped with its send time, which is how a lost message is told from a waiting one.

A job's Celery message can disappear while the job's row still says `queued`: the broker restarted without
its data, its database was flushed or its file deleted, or the worker that took the message died before
claiming the job (Redis keeps such a message aside until the visibility timeout, an hour by default).
Nothing would ever run the job. Re-sending every job that has waited a while is no answer either: a job
behind a long backlog has waited a while too, and re-sending the whole backlog every pass would grow the
queue without bound.

Both brokers we run on deliver a queue's messages in the order they were sent (Redis: `LPUSH` and
`BRPOP` on one list; kombu's SQL transport: the lowest id first). So the oldest message still waiting in
a queue says what the queue can hold: if it was sent after a job's last message, or nothing waits at all,
that job's message is not in the queue any more and, since its job is still unclaimed, it was lost. A
job whose message is at the head of the queue or behind it is merely waiting, however long, and is left
alone. Messages carry their send time in the `if_sent_at` header; the job row keeps the same instant in
`enqueued_at`, so the comparison is exact for one sender's clock (clocks of different machines must agree
to well under a lease period, as leases already require).

When the reaper gets it wrong it errs towards one extra message: clocks that disagree, a message a worker
has just taken but whose job it has not claimed yet, a message the broker put back at the end of the
queue. An extra message is harmless: the worker that gets it finds the job claimed under a live lease, or
finished, and does nothing (`workers.runner.claim`). The other way round (an oldest message that cannot
be dated, not being sent by `send_job`; a non-empty queue on a broker that can only count its messages)
the queue is taken to hold every job, and a lost job waits until the queue has drained past it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu.transport import redis as redis_transport
from kombu.transport import sqlalchemy as sql_transport

from app.base import utcnow

TASK = "workers.tasks.run_job_task"
STAMP = "if_sent_at"
# What a message that cannot be dated counts as: sent before anything, so the queue may hold any job.
UNDATED = datetime.min.replace(tzinfo=UTC)


def send_job(app: Celery, *, job_id: int, queue: str, sent_at: datetime | None = None) -> datetime:
    """Publish the job's message stamped with its send time (now, unless given): store it in `enqueued_at`."""
    sent_at = sent_at or utcnow()
    app.send_task(TASK, args=[job_id], queue=queue, headers={STAMP: sent_at.isoformat()})
    return sent_at


def oldest_waiting(app: Celery, queue: str) -> datetime | None:
    """When the oldest message still waiting in `queue` was sent: None if none waits, UNDATED if unknown."""
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel  # kombu's transports are untyped
        transport = type(channel)
        if issubclass(transport, redis_transport.Channel):
            # One list per priority step; a list is first in, first out, so each one's oldest is at its end.
            heads = [channel.client.lindex(channel._q_for_pri(queue, p), -1) for p in channel.priority_steps]
            stamps = [_stamp(json.loads(h)) for h in heads if h is not None]
            return min(stamps, default=None)
        if issubclass(transport, sql_transport.Channel):
            message = channel.message_cls
            try:
                head = (
                    channel.session.query(message)
                    .filter(message.queue_id == channel._get_or_create(queue).id)
                    .filter(message.visible != False)  # noqa: E712 - the transport's own filter, as _get has it
                    .order_by(message.sent_at, message.id)
                    .first()
                )
                return None if head is None else _stamp(json.loads(head.payload))
            finally:
                channel.session.close()  # a read left open on an SQLite broker would block its writers
        # Any other transport: it can say how many messages wait, not which.
        waiting = channel.queue_declare(queue=queue, passive=True).message_count
        return UNDATED if waiting else None


def _stamp(payload: dict[str, Any]) -> datetime:
    raw = (payload.get("headers") or {}).get(STAMP)
    try:
        stamp = datetime.fromisoformat(raw) if isinstance(raw, str) else UNDATED
    except ValueError:
        return UNDATED
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
