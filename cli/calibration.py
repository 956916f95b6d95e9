"""The default INT8 calibration data of `ts2net export` / `quantize` / `int8-study`: the embedded benchmark.

The export package calibrates on whatever real clips it is handed (export.int8.CalibrationSource)
and does not import the benchmark generator (docs/architecture.md); the command line joins them.
Clips come from the benchmark's validation split (seed 0), so they never overlap the test split
that `make demo` evaluates on, and are rendered into a temporary folder that is removed afterwards.
"""
from __future__ import annotations

from pathlib import Path

CALIBRATION_SPLIT = "val"
CALIBRATION_SEED = 0


def embedded_benchmark_source(count: int, workdir: Path, progress: bool = True
                              ) -> tuple[list[Path], list[str], str]:
    """Render `count` clips of the embedded benchmark into `workdir`: (video paths, captions, description)."""
    from synthbench import generate_dataset, load_annotations

    generate_dataset(workdir, seed=CALIBRATION_SEED, n_train=0, n_val=count, n_test=0, splits=(CALIBRATION_SPLIT,),
                     progress=progress)
    annotations = load_annotations(workdir)
    pairs = annotations[CALIBRATION_SPLIT]
    videos = sorted({v for v, _ in pairs})
    return ([annotations.video_path(v) for v in videos], [c for _, c in pairs],
            f"embedded benchmark (synthbench seed {CALIBRATION_SEED}, {CALIBRATION_SPLIT} split, {len(videos)} clips "
            "rendered at export)")
