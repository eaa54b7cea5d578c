"""Preference records: the JSONL manifest schema, validation and loading."""

from .records import Record, RecordError, read_manifest, validate_record

__all__ = ["Record", "RecordError", "read_manifest", "validate_record"]
