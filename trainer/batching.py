"""Batch plans (length-grouped or packed) and collation into tensors.

Packed rows carry position ids that restart at 0 for every sample and no 2D attention mask; transformers
turns restarting position ids into a block-diagonal causal mask (SDPA/eager) or varlen flash attention,
so no token attends across samples.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from trainer.formats import IGNORE_INDEX, Encoded

Row = list[int]  # indices of examples in one row (several when packed)
MicroBatch = list[Row]


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    num_targets: int  # label tokens the loss sees (after the model's one-position shift)
    num_real_tokens: int  # non-padding tokens

    def to(self, device: torch.device) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            attention_mask=None if self.attention_mask is None else self.attention_mask.to(device),
            position_ids=None if self.position_ids is None else self.position_ids.to(device),
            num_targets=self.num_targets,
            num_real_tokens=self.num_real_tokens,
        )


def pack_rows(lengths: list[int], order: list[int], capacity: int) -> list[Row]:
    """Best-fit decreasing bin packing: few rows, little padding, each sample whole in one row."""
    by_len = sorted(order, key=lambda i: -lengths[i])
    remaining: list[tuple[int, int]] = []  # (space left, row id), kept sorted
    rows: list[Row] = []
    for idx in by_len:
        need = lengths[idx]
        pos = bisect.bisect_left(remaining, (need, -1))
        if pos < len(remaining):
            space, row_id = remaining.pop(pos)
            rows[row_id].append(idx)
            space -= need
        else:
            rows.append([idx])
            row_id, space = len(rows) - 1, capacity - need
        if space > 0:
            bisect.insort(remaining, (space, row_id))
    return rows


def plan_epoch(
    lengths: list[int],
    *,
    batch_size: int,
    max_seq_len: int,
    packing: bool,
    group_by_length: bool,
    rng: random.Random,
) -> list[MicroBatch]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if packing:
        rows = pack_rows(lengths, order, max_seq_len)
        rng.shuffle(rows)
        rows.sort(key=len)  # stable: similar fill levels share a micro-batch, order otherwise random
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        return batches
    if group_by_length:
        mega = batch_size * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
            batches += [[[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        # the longest batch first: an out-of-memory shows up at step 1, not hours in
        longest = max(range(len(batches)), key=lambda b: max(lengths[r[0]] for r in batches[b]), default=0)
        if batches:
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches
    return [[[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]


def collate(examples: list[Encoded], batch: MicroBatch, *, pad_id: int, packed: bool) -> Batch:
    """Right-padded tensors; packed rows get restarting position ids and the first token of each sample masked."""
    rows_ids: list[list[int]] = []
    rows_labels: list[list[int]] = []
    rows_pos: list[list[int]] = []
    for row in batch:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for idx in row:
            ex = examples[idx]
            ids += ex.input_ids
            # the first token of a packed sample must not be a target of the previous sample's last token
            labels += [IGNORE_INDEX, *ex.labels[1:]]
            pos += list(range(len(ex.input_ids)))
        rows_ids.append(ids)
        rows_labels.append(labels)
        rows_pos.append(pos)
    width = max(len(r) for r in rows_ids)
    real = sum(len(r) for r in rows_ids)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels_t = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    position = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (ids, labels, pos) in enumerate(zip(rows_ids, rows_labels, rows_pos, strict=True)):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        labels_t[b, :n] = torch.tensor(labels)
        attention[b, :n] = 1
        # padding forms its own block (positions restart), so it is never attended to by real tokens
        position[b, :n] = torch.tensor(pos)
        position[b, n:] = torch.arange(width - n)
    num_targets = int((labels_t[:, 1:] != IGNORE_INDEX).sum())
    if packed:
        return Batch(input_ids, labels_t, None, position, num_targets, real)
    return Batch(input_ids, labels_t, attention, None, num_targets, real)
