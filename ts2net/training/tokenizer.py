"""A small byte-level BPE tokenizer trained on a benchmark's own captions.

Why not CLIP's 49k-token BPE? A model trained from scratch on the synthetic benchmark only ever
sees ~100 distinct words; a 49k-row token embedding would be >95% dead weight (and dominate the
demo model's size). A few hundred tokens cover every caption word as one token.

The layout keeps every invariant the model and the runtime rely on:

* ``<|startoftext|>`` and ``<|endoftext|>`` get the two HIGHEST ids (SOT = V-2, EOT = V-1), added
  after training, because the text tower pools the feature at ``argmax(input_ids)``: EOT must be
  the largest id of every row.
* Padding id 0 is an ordinary token (the byte ``!``), as in CLIP: padding sits after EOT, where
  the causal text transformer never lets it influence the pooled EOT feature.
* Byte-level (all 256 bytes are in the base alphabet) so any text encodes without an unknown token.
* The normalizer (collapse whitespace, strip, lowercase) lives inside the tokenizer.json, so the
  runtime -- which runs the file's own HF pipeline for non-CLIP tokenizers -- needs no extra code.
* Deterministic: the captions are de-duplicated and sorted before training, and the HF BPE trainer
  breaks count ties by token ids, so the same captions give a byte-identical file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, \
    trainers

from runtime.tokenizer import EOT_TOKEN, META_KEY, SOT_TOKEN, ClipTokenizer
from runtime.files import atomic_write_text

#: Total vocabulary (trained tokens + SOT + EOT). On the synthbench grammar ~535 tokens would make
#: every word a single token; 512 is always reached (so the size does not depend on how many
#: captions were seen) and keeps captions within 31 tokens, i.e. max_words = 32.
DEFAULT_VOCAB_SIZE = 512
_MIN_VOCAB_SIZE = 256 + 2  # the byte alphabet plus the two special tokens


def _untrained_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()])
    # GPT-2 style: every word carries its leading-space marker, so "red" is one token wherever it sits.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE,
                            out_path: str | os.PathLike | None = None) -> ClipTokenizer:
    """Train the caption BPE and return it loaded through the runtime's own loader.

    `vocab_size` counts the two special tokens. A corpus too small to learn that many merges
    gives a smaller vocabulary (read `.vocab_size` of the result). When `out_path` is given the
    tokenizer.json is written there atomically.
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is below {_MIN_VOCAB_SIZE} (256 bytes + SOT + EOT)")
    corpus = sorted({c for c in captions if isinstance(c, str) and c.strip()})
    if not corpus:
        raise ValueError("no captions to train the tokenizer on")
    tok = _untrained_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(corpus, trainer, length=len(corpus))
    trained = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT_TOKEN, EOT_TOKEN)])
    sot_id, eot_id = tok.token_to_id(SOT_TOKEN), tok.token_to_id(EOT_TOKEN)
    assert (sot_id, eot_id) == (trained, trained + 1), (sot_id, eot_id, trained)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}", special_tokens=[(SOT_TOKEN, sot_id), (EOT_TOKEN, eot_id)])
    spec = json.loads(tok.to_str())
    spec["model"][META_KEY] = {
        "format": "caption-byte-bpe", "sot_id": sot_id, "eot_id": eot_id, "pad_id": 0,
        "python_cleanup": False, "trained_on_captions": len(corpus)}
    text = json.dumps(spec, ensure_ascii=False, sort_keys=True)
    loaded = ClipTokenizer(text)  # the runtime's loader is the judge of the file we write
    if (loaded.sot_id, loaded.eot_id, loaded.vocab_size) != (sot_id, eot_id, eot_id + 1):
        raise RuntimeError("runtime tokenizer disagrees with the trained ids "
                           f"({loaded.sot_id}, {loaded.eot_id}, {loaded.vocab_size})")
    if out_path is not None:
        atomic_write_text(Path(out_path), text)
    return loaded
