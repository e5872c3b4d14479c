"""prepare_shakespeare.py: sources, vocabulary, split, checksum, errors."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import requests

import prepare_shakespeare as prep
from common import UserError

from conftest import ROOT, run


def test_prepare_local_text(tmp_path):
    text = "hello world\nto be or not to be\n" * 50
    (tmp_path / "in.txt").write_text(text)
    meta = prep.prepare(tmp_path / "out", input_path=tmp_path / "in.txt")
    assert meta["chars"] == sorted(set(text)) and meta["vocab_size"] == len(set(text))
    assert meta["total_chars"] == len(text)
    # train: the first 90%; then val: the first half of the rest; test: the second half (1550 = 1395 + 77 + 78)
    assert (meta["train_tokens"], meta["val_tokens"], meta["test_tokens"]) == (1395, 77, 78)
    assert meta["canonical"] is False and meta["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    train, val, test = (np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val", "test"))
    decode = lambda ids: "".join(meta["chars"][i] for i in ids)  # noqa: E731
    assert (decode(train), decode(val), decode(test)) == (text[:1395], text[1395:1472], text[1472:])
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    # re-running gives the same files and leaves no temp files behind
    prep.prepare(tmp_path / "out", input_path=tmp_path / "in.txt")
    assert np.array_equal(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16), train)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "test.bin", "train.bin", "val.bin"]


def test_text_too_short_for_three_splits_is_refused(tmp_path):
    (tmp_path / "in.txt").write_text("abcdefghijklmnopq")  # 17 characters: val and test get 1 each
    with pytest.raises(UserError, match="17 characters, too few to split into train, val and test"):
        prep.prepare(tmp_path / "out", input_path=tmp_path / "in.txt")


def test_non_ascii_vocabulary_is_sorted(tmp_path):
    (tmp_path / "in.txt").write_text("zéa\nçb" * 10, encoding="utf-8")
    meta = prep.prepare(tmp_path / "out", input_path=tmp_path / "in.txt")
    assert meta["chars"] == sorted(set("zéa\nçb"))


def canonical_corpus():
    for p in (os.environ.get("SHAKESPEARE_INPUT"), ROOT / "data/shakespeare_char/input.txt",
              ROOT.parent / "shared/data/tinyshakespeare/input.txt"):
        if p and Path(p).is_file() and hashlib.sha256(Path(p).read_bytes()).hexdigest() == prep.SHA256:
            return Path(p)
    pytest.skip("canonical tiny Shakespeare not available offline (set SHAKESPEARE_INPUT)")


def test_canonical_corpus_sizes(tmp_path):
    proc = run("prepare_shakespeare.py", "--input", canonical_corpus(), "--out-dir", tmp_path)
    assert "length of dataset in characters: 1,115,394" in proc.stdout
    assert "vocab size: 65" in proc.stdout
    assert "train has 1,003,854 tokens" in proc.stdout and "val has 55,770 tokens" in proc.stdout
    assert "test has 55,770 tokens" in proc.stdout
    assert "not the canonical" not in proc.stdout
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["canonical"] is True and meta["chars"][:2] == ["\n", " "]


class FakeResponse:
    def __init__(self, body):
        self.body, self.headers = body, {"content-length": str(len(body))}

    def raise_for_status(self):
        pass

    def iter_content(self, chunk_size):
        for i in range(0, len(self.body), chunk_size):
            yield self.body[i:i + chunk_size]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_the_sha256(tmp_path, monkeypatch):
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    monkeypatch.setattr(requests, "get", lambda *a, **k: FakeResponse(body))
    with pytest.raises(UserError, match="sha256.*refusing"):
        prep.prepare(tmp_path / "refused")
    assert not (tmp_path / "refused" / "input.txt").exists()  # a bad download is not kept
    # the same bytes with the matching checksum are accepted and cached as input.txt
    monkeypatch.setattr(prep, "SHA256", hashlib.sha256(body).hexdigest())
    meta = prep.prepare(tmp_path / "ok")
    assert meta["canonical"] is True and meta["source"] == prep.URL
    assert (tmp_path / "ok" / "input.txt").read_bytes() == body
    # second run uses the cached file, no network
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("downloaded again"))
    assert prep.prepare(tmp_path / "ok")["source"] == str(tmp_path / "ok" / "input.txt")


def test_network_failure_is_one_clear_line(tmp_path):
    # an unroutable URL fails at once, offline or not
    proc = run("prepare_shakespeare.py", "--out-dir", tmp_path, "--url", "http://127.0.0.1:9/input.txt",
               "--timeout", "2", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "could not download http://127.0.0.1:9/input.txt" in proc.stderr and "--input" in proc.stderr


def test_missing_input_file(tmp_path):
    proc = run("prepare_shakespeare.py", "--input", tmp_path / "nope.txt", "--out-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "nope.txt does not exist" in proc.stderr


def test_own_text_is_flagged_as_not_canonical(tmp_path):
    (tmp_path / "mine.txt").write_text("some other text entirely\n" * 40)
    proc = run("prepare_shakespeare.py", "--input", tmp_path / "mine.txt", "--out-dir", tmp_path / "o")
    assert "not the canonical tiny Shakespeare" in proc.stdout
