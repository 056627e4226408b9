"""Read an offline wandb run (``RUN/wandb/offline-run-*/run-*.wandb``): what its page would show once synced.

wandb 0.31 writes an offline run's config, history and summary only into this
file: a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of
records, each a 7-byte header: CRC32, little-endian length, kind 1 full / 2
first / 3 middle / 4 last) of ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def _payloads(raw: bytes) -> list[bytes]:
    if raw[:4] != b":W&B":
        raise ValueError("not a wandb run file (no :W&B header)")
    pos, out, part = HEADER, [], b""
    while pos + HEADER <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + HEADER])
        part += raw[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            out.append(part)
            part = b""
    return out


def _key(item: Any) -> str:
    """An item's key: ``key``, or its ``nested_key`` parts joined by ``/`` (how wandb stores keys that contain ``/``)."""
    return item.key or "/".join(item.nested_key)


def read_offline_run(folder: Path) -> dict[str, Any]:
    """``{"config": {key: value}, "history": [{key: value}, ...], "summary": {key: value}}`` of one offline run folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(folder).glob("run-*.wandb")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for data in _payloads(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            config.update({_key(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in rec.history.item}
            row.setdefault("_step", rec.history.step.num)
            history.append(row)
        elif kind == "summary":
            summary.update({_key(u): json.loads(u.value_json) for u in rec.summary.update})
    return {"config": config, "history": history, "summary": summary}
