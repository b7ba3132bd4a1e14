"""Reads the records of an offline W&B run file (``run-<id>.wandb``) with wandb's own protobuf messages.

The file is a LevelDB-style log (wandb's format): a 7-byte header (``:W&B``, magic, version), then 32 KiB
blocks of chunks, each ``crc32 (4) | length (2) | type (1)`` (1 full, 2 first, 3 middle, 4 last).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, chunks, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            chunks.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            chunks.append(pending + chunk)
            pending = b""
    records = []
    for raw in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def run_file(folder: Path) -> Path:
    files = sorted(Path(folder).rglob("offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise AssertionError(f"expected one offline W&B run under {folder}, found {files}")
    return files[0]


def of_type(records: list[Any], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def summary(records: list[Any]) -> dict[str, Any]:
    """The run summary: every summary update folded in order (nested keys joined with '/')."""
    result: dict[str, Any] = {}
    for record in of_type(records, "summary"):
        for item in record.update:
            key = item.key or "/".join(item.nested_key)
            result[key] = json.loads(item.value_json)
        for item in record.remove:
            result.pop(item.key or "/".join(item.nested_key), None)
    return result


def history(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for record in of_type(records, "history"):
        rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.item})
    return rows


def config(records: list[Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for run in of_type(records, "run"):
        for item in run.config.update:
            result[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    for record in of_type(records, "config"):
        for item in record.update:
            result[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return result


def read_finished_run(folder: Path, timeout: float = 120.0) -> list[Any]:
    """The records of the one offline run under ``folder``, once its ``exit`` record is on disk (wandb-core
    writes the file in its own process, and may still be flushing when ``wandb.finish()`` returns)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = read_records(run_file(folder))
        if of_type(records, "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)
