"""Torch-free CLIP BPE tokenizer whose ids match OpenAI CLIP / TS2-Net's SimpleTokenizer exactly.

The heavy lifting (byte-level BPE over 49k merges) is done by Hugging Face `tokenizers`, so a
bundle ships one standard ``tokenizer.json``. What `tokenizers` cannot reproduce bit-for-bit is
done in Python, each rule exactly once and in CLIP's order:

1. ``ftfy.fix_text``, ``html.unescape`` twice, strip (HF has no ftfy);
2. collapse ``\\s+`` runs to one space (Python ``re`` semantics), strip, ``str.lower()`` --
   Python's ``lower`` is context sensitive (Greek final sigma) where HF's ``Lowercase`` is not;
3. CLIP's regex split, using the same ``regex`` package CLIP uses. The words are passed to HF
   with ``is_pretokenized=True``. Splitting in Python also decides special tokens the way CLIP
   does: a literal ``<|endoftext|>`` is special only when the regex isolates it, so in
   ``"!<|endoftext|>"`` it is punctuation + letters, while HF's added-token matcher would
   take it out of the middle of the run.

The JSON also holds an equivalent HF normalizer (whitespace, strip, lowercase), the regex
``Split`` + ``ByteLevel`` pre-tokenizer and a ``<|startoftext|> $A <|endoftext|>`` post-processor,
so plain ``tokenizers.Tokenizer.from_file`` gives CLIP ids for already-clean text. Our runtime
removes that normalizer when it loads the file, so lowercasing is not applied twice.

Where the runtime facts live: `tokenizers` rejects unknown *top-level* keys in tokenizer.json
but ignores unknown keys in nested objects (checked with 0.15 and 0.23). So the facts go in
``spec["model"]["ts2net"] = {"sot_id", "eot_id", "pad_id", "python_cleanup": true, ...}``.
HF loaders ignore that key, and this module removes it before HF parses the file. A tokenizer.json
without it (e.g. a BPE trained with `tokenizers` on other captions) runs through its own HF
pipeline. SOT/EOT ids are found by looking up the token strings, and pad id is 0.
"""
from __future__ import annotations

import gzip
import html
import importlib.metadata
import importlib.util
import json
import os
import re

from pathlib import Path
from typing import Sequence

import ftfy
import numpy as np

from .files import atomic_write_text
import regex
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
META_KEY = "ts2net"  # nested under "model": top-level unknown keys make `tokenizers` refuse the file
_N_MERGES = 49152 - 256 - 2  # CLIP keeps merges[1 : 49152-256-2+1]
_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
            r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
_CLIP_SPLIT = regex.compile(_PATTERN, regex.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")  # stdlib `re`, as CLIP's whitespace_clean uses


def _byte_alphabet() -> list[str]:
    """GPT-2's byte->unicode table, in the order CLIP uses for vocab ids 0..255 (id 0 is '!')."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    shifted = [chr(256 + i) for i in range(256 - len(kept))]
    return [chr(b) for b in kept] + shifted


def clean_text(text: str) -> str:
    """CLIP's basic_clean + whitespace_clean + lower, in the official order."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _read_merges(path: Path) -> list[tuple[str, str]]:
    raw = path.read_bytes()
    what = (f"a CLIP BPE vocabulary ({BPE_FILENAME} or its .txt): a '#version' header line "
            f"then at least {_N_MERGES} merge lines 'a b'")
    try:
        lines = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc}") from exc
    merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: not {what}")
    return merges  # type: ignore[return-value]


def build_tokenizer_json(bpe_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> str | None:
    """Convert CLIP's gzip BPE vocabulary into a tokenizer.json.

    Returns the JSON text when `out_path` is None. Otherwise it writes the file atomically and
    returns None.
    """
    merges = _read_merges(Path(bpe_path))
    alphabet = _byte_alphabet()
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{bpe_path}: merges produce duplicate vocabulary entries")
    sot_id, eot_id = vocab[SOT_TOKEN], vocab[EOT_TOKEN]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?i)" + _PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}", special_tokens=[(SOT_TOKEN, sot_id), (EOT_TOKEN, eot_id)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT_TOKEN, EOT_TOKEN)])
    spec = json.loads(tok.to_str())
    spec["model"][META_KEY] = {
        "format": "openai-clip-bpe", "sot_id": sot_id, "eot_id": eot_id, "pad_id": 0,
        "python_cleanup": True,
        "cleanup": "ftfy.fix_text; html.unescape x2; strip; re \\s+ -> ' '; strip; str.lower; "
                   "CLIP regex split in Python (embedded normalizer is skipped by ts2net runtime)"}
    text = json.dumps(spec, ensure_ascii=False)
    if out_path is None:
        return text
    atomic_write_text(Path(out_path), text)
    return None




class ClipTokenizer:
    """Text -> int64 ids laid out the official way: ``[SOT] + bpe[:L-2] + [EOT]``, then 0-padded to L.

    Construct it from the text of a tokenizer.json, or use `load_tokenizer`.
    """

    def __init__(self, tokenizer_json: str):
        self._json = tokenizer_json
        spec = json.loads(tokenizer_json)
        meta = (spec.get("model") or {}).pop(META_KEY, None) or {}
        self._python_cleanup = bool(meta.get("python_cleanup"))
        if self._python_cleanup:
            spec["normalizer"] = None  # Python already collapsed whitespace and lowercased
        self._tok = Tokenizer.from_str(json.dumps(spec))
        self._tok.no_padding()
        self._tok.no_truncation()
        ids = {t: self._tok.token_to_id(t) for t in (SOT_TOKEN, EOT_TOKEN)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer has no {' / '.join(missing)} token; a CLIP-style tokenizer needs both")
        self._sot, self._eot = ids[SOT_TOKEN], ids[EOT_TOKEN]
        self._pad = int(meta.get("pad_id", 0))
        for key, found in (("sot_id", self._sot), ("eot_id", self._eot)):
            if key in meta and meta[key] != found:
                raise ValueError(f"tokenizer.json metadata says {key}={meta[key]} but the vocabulary has {found}")

    sot_id = property(lambda self: self._sot)
    eot_id = property(lambda self: self._eot)
    pad_id = property(lambda self: self._pad)
    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a sequence of str, not a single string (use encode())")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
        if self._python_cleanup:
            words = [_CLIP_SPLIT.findall(clean_text(t)) for t in texts]
            encs = self._tok.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        else:
            encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    def bpe_ids(self, text: str) -> list[int]:
        """Untruncated BPE ids for one text, without SOT/EOT."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._ids([text])[0]

    def encode_batch(self, texts: Sequence[str], max_words: int = 32) -> np.ndarray:
        """int64 [len(texts), max_words]. A long text keeps SOT, its first max_words-2 ids and EOT."""
        if isinstance(max_words, bool) or not isinstance(max_words, (int, np.integer)):
            raise TypeError(f"max_words must be an int, got {type(max_words).__name__}")
        if max_words < 3:
            raise ValueError(f"max_words must be >= 3 (SOT + at least one token + EOT), got {max_words}")
        rows = self._ids(texts)
        out = np.full((len(rows), int(max_words)), self._pad, dtype=np.int64)
        for row, ids in zip(out, rows):
            seq = [self._sot, *ids[: max_words - 2], self._eot]
            row[: len(seq)] = seq
        return out

    def encode(self, text: str, max_words: int = 32) -> np.ndarray:
        """int64 [max_words] ids for one text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self.encode_batch([text], max_words)[0]

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer.json this tokenizer was loaded from (including our metadata), atomically."""
        atomic_write_text(Path(path), self._json)


def load_tokenizer(path: str | os.PathLike) -> ClipTokenizer:
    """Load a tokenizer.json, or build one from a CLIP BPE vocabulary (``*.txt.gz`` / ``*.txt``)."""
    p = Path(path)
    expected = f"a Hugging Face tokenizer.json or a CLIP BPE vocabulary ({BPE_FILENAME} or .txt)"
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {p} (expected {expected})")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b" or p.suffix == ".txt" or raw.startswith(b'"bpe_simple_vocab') or raw.startswith(b"#version"):
        return ClipTokenizer(build_tokenizer_json(p))
    if raw.lstrip()[:1] == b"{":
        try:
            return ClipTokenizer(raw.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{p}: not a usable tokenizer.json ({exc})") from exc
    raise ValueError(f"{p}: unrecognised tokenizer file (expected {expected})")


def find_bpe_vocab() -> Path | None:
    """Find CLIP's BPE vocabulary in an installed open_clip or clip package without importing it
    (importing them would pull in torch)."""
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_FILENAME
            if candidate.is_file():
                return candidate
    for dist in ("open_clip_torch", "clip", "openai-clip"):
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == BPE_FILENAME and f.parent.name in ("open_clip", "clip"):
                candidate = Path(f.locate())
                if candidate.is_file():
                    return candidate
    return None
