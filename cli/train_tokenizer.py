"""`ts2net train-tokenizer DATA OUT.json [VOCAB_SIZE]`: a caption BPE trained on a benchmark's train captions
(thin wrapper over ts2net.training.tokenizer)."""
from __future__ import annotations

import click

from cli.errors import CommandError


@click.command("train-tokenizer")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("vocab_size", type=click.IntRange(min=3), required=False)
def train_tokenizer_command(data, out, vocab_size):
    """Train a CLIP-compatible caption BPE (tokenizer.json) on DATA's train captions."""
    from synthbench import load_annotations
    from ts2net.training.tokenizer import DEFAULT_VOCAB_SIZE, train_caption_tokenizer

    try:
        captions = [c for _, c in load_annotations(data).train]
        tok = train_caption_tokenizer(captions, vocab_size or DEFAULT_VOCAB_SIZE, out)
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"{out}: vocab {tok.vocab_size}, SOT {tok.sot_id}, EOT {tok.eot_id}, from {len(captions)} captions")
