"""Dataset formats: readers (import) with precise errors, writers (export), train/validation split.

Pure and streaming: no database, no HTTP. See docs/formats.md for the formats and the rules.
"""

from app.pipeline.formats.bundle import PROVENANCE, build_bundle, dataset_info, parquet_bytes, parquet_row
from app.pipeline.formats.card import CardInfo, dataset_card, length_summary
from app.pipeline.formats.model import FORMATS, BadLine, FormatError, Limits, ParsedRecord
from app.pipeline.formats.readers import detect_format, iter_records, parse_all
from app.pipeline.formats.split import split
from app.pipeline.formats.writers import (
    ALL_EXPORTERS,
    EXPORT_MEDIA_TYPES,
    EXPORTERS,
    PAIR_EXPORTERS,
    ROWS,
    to_alpaca,
    to_axolotl,
    to_dpo,
    to_dpo_plain,
    to_messages,
    to_openai,
    to_sharegpt,
    write_alpaca,
    write_alpaca_jsonl,
    write_openai_jsonl,
    write_sharegpt,
)

__all__ = [
    "ALL_EXPORTERS",
    "EXPORTERS",
    "EXPORT_MEDIA_TYPES",
    "FORMATS",
    "PAIR_EXPORTERS",
    "PROVENANCE",
    "ROWS",
    "BadLine",
    "CardInfo",
    "FormatError",
    "Limits",
    "ParsedRecord",
    "build_bundle",
    "dataset_card",
    "dataset_info",
    "detect_format",
    "iter_records",
    "length_summary",
    "parquet_bytes",
    "parquet_row",
    "parse_all",
    "split",
    "to_alpaca",
    "to_axolotl",
    "to_dpo",
    "to_dpo_plain",
    "to_messages",
    "to_openai",
    "to_sharegpt",
    "write_alpaca",
    "write_alpaca_jsonl",
    "write_openai_jsonl",
    "write_sharegpt",
]
