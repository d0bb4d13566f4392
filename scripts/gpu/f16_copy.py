#!/usr/bin/env python3
"""Copies a model directory with its safetensors weights converted from F32 to F16.

The device tool carries at most 64 MiB with the working tree; all-MiniLM-L6-v2's F32 checkpoint
is 87 MiB and its F16 copy 44 MiB. qtier reads F16 checkpoints (widened exactly to f32), so the
GPU checks compare CPU and GPU on the same F16 weights. Other files are copied unchanged; tensors
that are not F32 keep their dtype. Needs only numpy.

Usage: scripts/gpu/f16_copy.py SRC_DIR DST_DIR
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np


def convert(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    out_header, chunks, offset = {}, [], 0
    for name, entry in header.items():
        if name == "__metadata__":
            out_header[name] = entry
            continue
        start, end = entry["data_offsets"]
        raw = body[start:end]
        dtype = entry["dtype"]
        if dtype == "F32":
            values = np.frombuffer(raw, dtype="<f4")
            if not np.all(np.isfinite(values.astype("<f2"))):
                sys.exit(f"{src}: {name} does not fit F16")
            raw, dtype = values.astype("<f2").tobytes(), "F16"
        out_header[name] = {"dtype": dtype, "shape": entry["shape"], "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(out_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for raw in chunks:
            f.write(raw)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    if dst.exists():
        sys.exit(f"{dst} exists; remove it first")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    for path in sorted(src.rglob("*.safetensors")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        convert(path, target)
        print(f"{path} -> {target}: {target.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
