"""`ts2net summary`: the demo summary report and the ablation table (thin wrapper over runtime.summary)."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.summary import ablation_markdown, ablation_table, write_ablation_table, write_summary


@click.group("summary", invoke_without_command=True)
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--reports", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/demo"))
@click.option("--ablations", type=click.Path(path_type=Path))
@click.pass_context
def summary_command(ctx, bundle, reports, ablations):
    """Write reports/demo/summary.{json,md} (+ ablations.png)."""
    if ctx.invoked_subcommand:
        return
    if bundle is None:
        raise click.UsageError("--bundle is required")
    markdown, json_path, md_path = write_summary(bundle, reports, ablations)
    click.echo(markdown)
    click.echo(f"wrote {md_path} and {json_path}")


@summary_command.command("collect-ablations")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.argument("variants", nargs=-1, required=True)
def collect_ablations(out, variants):
    """VARIANTS: NAME=EVAL_JSON[,TRAIN_SUMMARY_JSON] for each trained variant."""
    try:
        table = ablation_table(variants)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    write_ablation_table(out, table)
    click.echo("\n".join(ablation_markdown(table)))
