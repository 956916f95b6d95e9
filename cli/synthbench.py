"""`ts2net synthbench`: generate the synthetic text-to-video retrieval benchmark (thin wrapper over synthbench)."""
from __future__ import annotations

import json

import click

from cli.errors import CommandError
from synthbench.generate import DEFAULT_COUNTS, generate_dataset
from synthbench.scene import SPLITS, GenParams


@click.command(name="synthbench")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--train", "n_train", default=DEFAULT_COUNTS["train"], show_default=True, type=click.IntRange(0))
@click.option("--val", "n_val", default=DEFAULT_COUNTS["val"], show_default=True, type=click.IntRange(0))
@click.option("--test", "n_test", default=DEFAULT_COUNTS["test"], show_default=True, type=click.IntRange(0))
@click.option("--splits", default=",".join(SPLITS), show_default=True, help="Comma-separated splits to generate now.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="Rendering processes.")
@click.option("--min-duration", default=GenParams.min_duration, show_default=True, type=float)
@click.option("--max-duration", default=GenParams.max_duration, show_default=True, type=float)
@click.option("--motion-frac", default=GenParams.motion_pair_frac, show_default=True, type=float,
              help="Fraction of test clips in motion pairs.")
@click.option("--small-frac", default=GenParams.small_pair_frac, show_default=True, type=float,
              help="Fraction of test clips in small-object pairs.")
@click.option("--train-captions", default=GenParams.train_captions, show_default=True, type=click.IntRange(1))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synthbench_command(out_dir, seed, n_train, n_val, n_test, splits, workers, min_duration, max_duration,
                                     motion_frac, small_frac, train_captions, quiet):
    """Generate the synthetic text-to-video retrieval benchmark (resumable)."""
    names = tuple(s.strip() for s in splits.split(",") if s.strip())
    params = GenParams(
        min_duration=min_duration, max_duration=max_duration, motion_pair_frac=motion_frac,
        small_pair_frac=small_frac, train_captions=train_captions,
    )
    try:
        summary = generate_dataset(out_dir, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test,
                                   splits=names, workers=workers, progress=not quiet, params=params)
    except ValueError as e:
        raise CommandError(str(e)) from e
    click.echo(json.dumps(summary, indent=1))
    if summary["incomplete_splits"]:
        click.echo(f"warning: splits {summary['incomplete_splits']} have missing clips and are left out of the "
                   f"annotations; rerun with --splits naming them", err=True)
