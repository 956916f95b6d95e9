"""`ts2net int8-study` (thin wrapper over export.int8_study): which INT8 recipe to ship, measured in one run."""
from __future__ import annotations

from pathlib import Path

import click

from cli.calibration import embedded_benchmark_source
from export import int8_study


@click.command("int8-study")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/int8-methods"))
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--recipes", default=",".join(int8_study.RECIPES), show_default=True, help="Comma-separated subset of the recipes.")
def int8_study_command(bundle_dir, out_dir, threads, iters, recipes):
    """Quantize a bundle with every INT8 recipe and measure speed and gate figures in one run."""
    from runtime.reports import write_report

    chosen = tuple(r.strip() for r in recipes.split(",") if r.strip())
    unknown = [r for r in chosen if r not in int8_study.RECIPES]
    if unknown or not chosen:
        raise click.BadParameter(f"{unknown or recipes!r}: expected a subset of {list(int8_study.RECIPES)}", param_hint="--recipes")
    report = int8_study.run_study(bundle_dir, threads=threads, iters=iters, recipes=chosen,
                                  calibration_source=embedded_benchmark_source)
    markdown = int8_study.render_markdown(report)
    paths = write_report(out_dir, "int8-methods", report, markdown)
    click.echo(markdown)
    click.echo(f"report: {paths[0]}, {paths[1]}")
