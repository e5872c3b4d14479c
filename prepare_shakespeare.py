"""
Prepare tiny Shakespeare for character-level training.

Where the text comes from, first that applies:
  1. --input PATH (or the environment variable SHAKESPEARE_INPUT)
  2. an existing <out-dir>/input.txt
  3. a download of the canonical corpus (checked against its sha256)

Writes to <out-dir> (default data/shakespeare_char):
  train.bin            token ids as uint16: the first 90% of the text
  val.bin              the next 5%: loss curves, the best checkpoint and every choice (learning rate, ...)
  test.bin             the last 5%: held out, reported only in final tables
  meta.json            vocabulary (sorted distinct characters), sizes, source and its sha256
"""

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from common import ArgumentParser, UserError, atomic_write, run_cli, write_json, write_text

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.9  # the rest is split in half: val, then test
SPLITS = ("train", "val", "test")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(url, timeout):
    """Fetch the corpus with a progress bar; any network failure becomes a one-line UserError."""
    hint = "pass --input PATH (or set SHAKESPEARE_INPUT) to use a local copy of input.txt"
    try:
        with requests.get(url, stream=True, timeout=timeout) as r:
            r.raise_for_status()
            total = int(r.headers.get("content-length", 0)) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
                for chunk in r.iter_content(chunk_size=1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as e:
        status = getattr(e.response, "status_code", None)
        reason = f"HTTP {status}" if status else type(e).__name__  # the full urllib3 text is a paragraph
        raise UserError(f"could not download {url} ({reason}); {hint}") from None
    data = b"".join(chunks)
    if sha256_of(data) != SHA256:
        raise UserError(
            f"downloaded file has sha256 {sha256_of(data)}, expected {SHA256}; refusing it. {hint}"
        )
    return data


def read_source(input_path, out_dir, url, timeout):
    """Return (text bytes, description of where they came from)."""
    if input_path:
        p = Path(input_path)
        if not p.is_file():
            raise UserError(f"input file {p} does not exist")
        return p.read_bytes(), str(p)
    cached = out_dir / "input.txt"
    if cached.is_file():
        return cached.read_bytes(), str(cached)
    print(f"downloading {url}")
    data = download(url, timeout)
    atomic_write(cached, lambda f: f.write(data))
    return data, url


def encode(text):
    """Sorted distinct characters and the text as ids into that list."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab, ids = np.unique(codepoints, return_inverse=True)  # np.unique sorts, like sorted(set(text))
    if len(vocab) > np.iinfo(np.uint16).max + 1:
        raise UserError(f"text has {len(vocab)} distinct characters; at most 65536 fit in uint16 ids")
    return [chr(c) for c in vocab], ids.astype(np.uint16)


def prepare(out_dir, input_path=None, url=URL, timeout=30.0):
    out_dir = Path(out_dir)
    data, source = read_source(input_path, out_dir, url, timeout)
    digest = sha256_of(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    chars, ids = encode(text)
    n_train = int(len(ids) * TRAIN_FRACTION)
    n_val = (len(ids) - n_train) // 2
    parts = dict(zip(SPLITS, (ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:])))
    if min(map(len, parts.values())) < 2:
        raise UserError(f"{source} holds {len(text)} characters, too few to split into train, val and test")
    for split, arr in parts.items():
        atomic_write(out_dir / f"{split}.bin", lambda f, arr=arr: f.write(arr.tobytes()))
    meta = {
        "vocab_size": len(chars),
        "chars": chars,
        "total_chars": len(text),
        **{f"{split}_tokens": len(arr) for split, arr in parts.items()},
        "source": source,
        "sha256": digest,
        "canonical": digest == SHA256,
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=os.environ.get("SHAKESPEARE_INPUT") or None,
                        help="local text file to use instead of downloading (default: $SHAKESPEARE_INPUT)")
    parser.add_argument("--out-dir", default="data/shakespeare_char", help="where to write the prepared data")
    parser.add_argument("--url", default=URL, help="download address of the canonical corpus")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    args = parser.parse_args()

    meta = prepare(args.out_dir, args.input, args.url, args.timeout)
    print(f"source: {meta['source']} (sha256 {meta['sha256'][:12]}...)")
    if not meta["canonical"]:
        print("note: this is not the canonical tiny Shakespeare corpus (sha256 differs); results will not match the README")
    print(f"length of dataset in characters: {meta['total_chars']:,}")
    print(f"vocab size: {meta['vocab_size']}")
    for split in SPLITS:
        print(f"{split} has {meta[f'{split}_tokens']:,} tokens")
    print(f"wrote {args.out_dir}/train.bin, val.bin, test.bin, meta.json")


if __name__ == "__main__":
    run_cli(main)
