#!/usr/bin/env python3
"""Copies a BERT model directory for the GPU check, small enough to carry: the word-embedding
rows of tokens the checks never use are zeroed and model.safetensors is gzipped.

The device tool carries at most 64 MiB with the working tree; all-MiniLM-L6-v2's F32 checkpoint
is 87 MiB, 47 MiB of it the word-embedding table. The GPU checks (models/examples/gpu_minilm.rs,
`qtier bench model`) only embed the development sentences (models/data/dev-sentences.txt), so
keeping the rows of their tokens (and the special tokens) leaves every figure they produce
identical to the full checkpoint's, in F32: an F16 copy was not (the CPU's own int8 minimum
cosine to fp32 on the development sentences fell from 0.996949 to 0.994985, under issue 9's bar).
`scripts/gpu-check.sh` unzips model.safetensors.gz. Check the copy before carrying it: `qtier eval
COPY COPY-int8` must print the full model's figures.

Needs numpy and tokenizers (pip). Usage: scripts/gpu/pruned_copy.py SRC_DIR DST_DIR [TEXT_FILE...]
(default text: models/data/dev-sentences.txt)
"""
import gzip
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def used_ids(model: Path, texts: list[Path]) -> set[int]:
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS} - {None}
    for path in texts:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for text in lines + [" ".join(lines)]:
            ids.update(tokenizer.encode(text).ids)
    return ids


def prune(src: Path, dst: Path, keep: set[int]) -> None:
    data = src.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = bytearray(data[8 + header_len :])
    pruned = [name for name in header if name.endswith("word_embeddings.weight")]
    if len(pruned) != 1:
        sys.exit(f"{src}: expected one word_embeddings.weight, found {pruned}")
    entry = header[pruned[0]]
    if entry["dtype"] != "F32" or len(entry["shape"]) != 2:
        sys.exit(f"{src}: {pruned[0]} is {entry['dtype']} {entry['shape']}, expected a 2-D F32 table")
    rows, cols = entry["shape"]
    start, end = entry["data_offsets"]
    table = np.frombuffer(bytes(body[start:end]), dtype="<f4").reshape(rows, cols).copy()
    mask = np.ones(rows, dtype=bool)
    mask[sorted(i for i in keep if i < rows)] = False
    table[mask] = 0.0
    body[start:end] = table.tobytes()
    with gzip.open(dst.with_name(dst.name + ".gz"), "wb", compresslevel=6) as f:
        f.write(data[: 8 + header_len])
        f.write(body)
    print(f"{src}: kept {rows - int(mask.sum())} of {rows} rows of {pruned[0]}")


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    repo = Path(__file__).resolve().parents[2]
    texts = [Path(p) for p in sys.argv[3:]] or [repo / "models/data/dev-sentences.txt"]
    if dst.exists():
        sys.exit(f"{dst} exists; remove it first")
    weights = src / "model.safetensors"
    if not weights.is_file():
        sys.exit(f"{weights}: not found (a single-file checkpoint is expected)")
    keep = used_ids(src, texts)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", ".qtier-verified"))
    prune(weights, dst / "model.safetensors", keep)
    size = (dst / "model.safetensors.gz").stat().st_size
    print(f"{dst}/model.safetensors.gz: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
