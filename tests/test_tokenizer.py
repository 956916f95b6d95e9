"""runtime.tokenizer must give exactly the ids of the official TS2-Net / OpenAI CLIP SimpleTokenizer.

The 12 vectors in shared/clip were produced by the official tokenizer. A small independent
pure-Python implementation of the spec below (`_reference_bpe_ids`) checks cases the vectors
do not cover: special-token literals inside punctuation runs, Greek final sigma, odd whitespace.
"""
from __future__ import annotations

import gzip
import html
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import ftfy
import numpy as np
import pytest
import regex

from runtime.tokenizer import (ClipTokenizer, build_tokenizer_json, clean_text, find_bpe_vocab,
                               load_tokenizer)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "clip"
VOCAB = SHARED / "bpe_simple_vocab_16e6.txt.gz"
VECTORS = SHARED / "tokenizer_vectors.json"
pytestmark = pytest.mark.skipif(
    not (VOCAB.is_file() and VECTORS.is_file()),
    reason=f"CLIP vocabulary / test vectors not found under {SHARED} (clone shared/ beside the repo)")

SOT, EOT = 49406, 49407
CLIP_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


@pytest.fixture(scope="module")
def vectors():
    return json.loads(VECTORS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def from_vocab():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def json_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    assert build_tokenizer_json(VOCAB, path) is None
    return path


@pytest.fixture(scope="module")
def from_json(json_path):
    return load_tokenizer(json_path)


@pytest.fixture(params=["vocab", "json"])
def tok(request, from_vocab, from_json):
    return from_vocab if request.param == "vocab" else from_json


# ---------------------------------------------------------------- independent reference
@pytest.fixture(scope="module")
def reference():
    """Plain-Python CLIP BPE from the spec: returns text -> untruncated bpe ids."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    byte_char, extra = {}, 0
    for b in range(256):
        if b in printable:
            byte_char[b] = chr(b)
        else:
            byte_char[b] = chr(256 + extra)
            extra += 1
    alphabet = [byte_char[b] for b in printable] + [byte_char[b] for b in range(256) if b not in printable]
    lines = gzip.decompress(VOCAB.read_bytes()).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {m: r for r, m in enumerate(merges)}

    def bpe(word):
        syms = [byte_char[b] for b in word.encode("utf-8")]
        syms[-1] += "</w>"
        while len(syms) > 1:
            best = min(zip(syms, syms[1:]), key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    merged.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            syms = merged
        return syms

    def encode(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        out = []
        for word in regex.findall(CLIP_PATTERN, text, regex.IGNORECASE):
            out += [ids[word]] if word in ("<|startoftext|>", "<|endoftext|>") else [ids[s] for s in bpe(word)]
        return out

    return encode


TRICKY = [
    "a<|endoftext|>b", "<|ENDOFTEXT|> shouting", "!<|endoftext|>", "x <|startoftext|>y",
    "ΟΔΟΣ ΣΑΣ", "İstanbul", "e\u0301clair", "schÃ¶n", "fish &amp;amp; chips", "tab\tnl\nnbsp\xa0ideo\u3000end",
    "\x1cfile\x1dsep", "zero\u200bwidth", "don't WE'RE it'S", "123abc456", "mañana ¿qué?",
    "😀😀😀 ok", "....!!!???", "", "   ", "the the the the", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "١٢٣ arabic digits", "ｆｕｌｌｗｉｄｔｈ", "🇫🇷 flag", "c++ & c#", "<b>bold</b> &lt;tag&gt;",
]


# ---------------------------------------------------------------- official vectors
def test_all_vectors(tok, vectors):
    max_words = vectors["meta"]["max_words"]
    assert len(vectors["cases"]) == 12
    for case in vectors["cases"]:
        assert tok.bpe_ids(case["text"]) == case["bpe_ids"], case["text"]
        assert tok.encode(case["text"], max_words).tolist() == case["input_ids"], case["text"]
    batch = tok.encode_batch([c["text"] for c in vectors["cases"]], max_words)
    assert batch.dtype == np.int64 and batch.shape == (12, max_words)
    assert batch.tolist() == [c["input_ids"] for c in vectors["cases"]]


def test_vocab_layout_matches_vector_tokens(json_path, vectors):
    spec = json.loads(json_path.read_text(encoding="utf-8"))
    id_to_token = {i: t for t, i in spec["model"]["vocab"].items()}
    for case in vectors["cases"]:
        assert [id_to_token[i] for i in case["bpe_ids"]] == case["bpe_tokens"]
    assert id_to_token[0] == "!" and id_to_token[SOT] == "<|startoftext|>" and id_to_token[EOT] == "<|endoftext|>"


def test_reference_agrees_with_vectors(reference, vectors):
    for case in vectors["cases"]:
        assert reference(case["text"]) == case["bpe_ids"], case["text"]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_match_reference(tok, reference, text):
    assert tok.bpe_ids(text) == reference(text)


# ---------------------------------------------------------------- layout
def test_properties(tok):
    assert isinstance(tok, ClipTokenizer)
    assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (SOT, EOT, 0, 49408)


def test_truncation_keeps_sot_prefix_eot(tok, vectors):
    # the vectors' "long caption" has 29 bpe ids, so it fits in 32; double it to force truncation
    longest = max(vectors["cases"], key=lambda c: len(c["bpe_ids"]))
    text = longest["text"] + " " + longest["text"]
    ids = tok.bpe_ids(text)
    assert ids == longest["bpe_ids"] * 2 and len(ids) > 32
    for max_words in (32, 8, 3):
        row = tok.encode(text, max_words).tolist()
        assert row == [SOT] + ids[: max_words - 2] + [EOT]
        assert 0 not in row


def test_padding_with_zero(tok):
    row = tok.encode("Hello, World!", 10).tolist()
    assert row == [SOT] + tok.bpe_ids("hello, world!") + [EOT] + [0] * 4
    assert tok.encode(" \n\t ", 5).tolist() == [SOT, EOT, 0, 0, 0]
    assert tok.encode_batch([], 7).shape == (0, 7)


def test_literal_special_tokens(tok):
    assert tok.bpe_ids("a <|endoftext|> b")[1] == EOT
    assert EOT in tok.bpe_ids("<|EndOfText|>")  # lowercased before the split, as in CLIP
    assert tok.bpe_ids("go<|startoftext|>")[-1] == SOT
    # CLIP's regex swallows '<|' into the punctuation run '!<|', so no special id here
    assert EOT not in tok.bpe_ids("!<|endoftext|>")


def test_cleanup_rules(tok):
    same = tok.bpe_ids
    assert same("fish &amp;amp; chips") == same("fish & chips")  # html.unescape twice
    assert same("  A\u3000b\xa0\tC\n\n") == same("a b c")
    assert same("schÃ¶n") == same("schön")  # ftfy mojibake repair
    assert clean_text("  X &amp;  Y ") == "x & y"
    assert clean_text("ΟΔΟΣ") == "οδος"  # Python's context-aware lower(), not per-char


# ---------------------------------------------------------------- tokenizer.json
def test_json_file_is_plain_hf_and_carries_meta(json_path, from_json):
    from tokenizers import Tokenizer

    spec = json.loads(json_path.read_text(encoding="utf-8"))
    meta = spec["model"]["ts2net"]
    assert (meta["sot_id"], meta["eot_id"], meta["pad_id"], meta["python_cleanup"]) == (SOT, EOT, 0, True)
    assert not list(json_path.parent.glob(".*.tmp"))
    hf = Tokenizer.from_file(str(json_path))  # vanilla `tokenizers` accepts the nested key
    clean = "a man is driving a car, don't he?"
    assert hf.encode(clean).ids == [SOT] + from_json.bpe_ids(clean) + [EOT]
    assert build_tokenizer_json(VOCAB) == json_path.read_text(encoding="utf-8")


def test_save_round_trip(from_vocab, tmp_path, vectors):
    out = tmp_path / "sub" / "tokenizer.json"
    from_vocab.save(out)
    again = load_tokenizer(out)
    texts = [c["text"] for c in vectors["cases"]] + TRICKY
    assert np.array_equal(again.encode_batch(texts), from_vocab.encode_batch(texts))


def test_plain_text_vocab(tmp_path, from_vocab):
    txt = tmp_path / "vocab.txt"
    txt.write_bytes(gzip.decompress(VOCAB.read_bytes()))
    assert load_tokenizer(txt).bpe_ids("hello world") == from_vocab.bpe_ids("hello world")


def test_hf_trained_bpe(tmp_path):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = ["a dog runs on the grass", "a cat sleeps on the sofa", "people dance in the street"] * 5
    hf.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"]))
    hf.add_special_tokens([AddedToken("<|startoftext|>", special=True), AddedToken("<|endoftext|>", special=True)])
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = load_tokenizer(path)
    n = hf.get_vocab_size()
    assert (tok.sot_id, tok.eot_id, tok.pad_id, tok.vocab_size) == (n - 2, n - 1, 0, n)
    ids = hf.encode("a dog sleeps", add_special_tokens=False).ids
    assert tok.bpe_ids("a dog sleeps") == ids
    assert tok.encode("a dog sleeps", 8).tolist() == [n - 2, *ids, n - 1] + [0] * (6 - len(ids))


# ---------------------------------------------------------------- errors
def test_bad_inputs(from_vocab):
    with pytest.raises(ValueError, match="max_words"):
        from_vocab.encode_batch(["x"], max_words=2)
    with pytest.raises(TypeError, match="max_words"):
        from_vocab.encode("x", max_words="32")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        from_vocab.encode_batch(["ok", 3, "ok"])
    with pytest.raises(TypeError, match="single string"):
        from_vocab.encode_batch("not a list")
    with pytest.raises(TypeError, match="str"):
        from_vocab.encode(None)
    with pytest.raises(TypeError, match="str"):
        from_vocab.bpe_ids(b"bytes")


def test_bad_files(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nope.*tokenizer.json or a CLIP BPE vocabulary"):
        load_tokenizer(missing)
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00\x01binary")
    with pytest.raises(ValueError, match="model.bin.*expected"):
        load_tokenizer(junk)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_tokenizer(broken)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(ValueError, match="short.txt.gz.*CLIP BPE vocabulary"):
        load_tokenizer(short)


def test_json_without_clip_specials(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "tokenizer.json"
    Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(str(path))
    with pytest.raises(ValueError, match="<\\|startoftext\\|>"):
        load_tokenizer(path)


# ---------------------------------------------------------------- packaging
def test_find_bpe_vocab_without_importing(tmp_path, monkeypatch):
    found = find_bpe_vocab()
    assert found is None or found.is_file()
    pkg = tmp_path / "open_clip"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "bpe_simple_vocab_16e6.txt.gz").write_bytes(VOCAB.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert find_bpe_vocab() == pkg / "bpe_simple_vocab_16e6.txt.gz"
    assert "open_clip" not in sys.modules


def test_module_never_imports_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import runtime; runtime.load_tokenizer; import runtime.tokenizer as t\n"
            "assert 'torch' not in {k for k, v in sys.modules.items() if v is not None}")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
