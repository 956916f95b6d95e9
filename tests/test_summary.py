"""The demo summary only re-reads what other commands measured; check it carries the numbers over."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cli.summary import summary_command as main
from runtime.summary import ablation_markdown, build_summary


def _eval_report(r1: float, motion_r1: float) -> dict:
    metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "R50": 90.0, "MdR": 7.0, "MnR": 20.0, "n_queries": 100.0}
    return {"bundle": {"model": "demo"}, "metrics": {"t2v": metrics, "v2t": metrics, "t2v_dsl": metrics, "v2t_dsl": metrics},
            "subsets": {"motion": {"t2v": dict(metrics, R1=motion_r1),
                                   "pair_accuracy": {"accuracy": motion_r1 + 50, "ties": 0, "n_queries": 50}},
                        "small_object": {"t2v": metrics}},
            "dataset": {"n_captions_evaluated": 100, "n_videos_evaluated": 100}}


def test_collect_ablations_and_table(tmp_path):
    paths = {}
    for name, r1, motion in (("baseline", 10.0, 5.0), ("full", 30.0, 25.0)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(_eval_report(r1, motion)))
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"wall_s": 600, "steps": 750, "epochs": 10,
                                 "config": {"token_shift": False, "token_selection": False,
                                            "sim_header": "meanP"}}))
    out = tmp_path / "ablations.json"
    result = CliRunner().invoke(main, ["collect-ablations", "--out", str(out), f"baseline={paths['baseline']},{train}",
                                       f"full={paths['full']}"])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert table["variants"]["full"]["subsets"]["motion"]["t2v"]["R1"] == 25.0
    lines = ablation_markdown(table)
    assert lines[2].startswith("| baseline | meanP | no | no | 10.0 |") and "| 750 | 10.0 |" in lines[2]
    assert "| 5.0 | 10.0 | 55.0 | - |" in lines[2]    # motion / small-object R@1, then pair accuracies
    assert lines[3].startswith("| full | seqTransf | yes | yes | 30.0 |")


def test_summary_reads_manifest_and_reports(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    figures = {"text_embeds": {"cosine_min": 1.0}, "frame_embeds": {"cosine_min": 0.9999, "max_abs_err": 1e-5},
               "patch_indices": {"agreement": 1.0}, "similarity": {"top1_agreement": 1.0}}
    (bundle / "manifest.json").write_text(json.dumps({
        "model": {"name": "demo"}, "source_checkpoint": {"name": "ts2net/demo"}, "valid": True,
        "parity": {"fp32": {"figures": figures, "passed": True}}}))
    reports = tmp_path / "reports"
    (reports / "eval").mkdir(parents=True)
    (reports / "eval" / "eval-test.json").write_text(json.dumps(_eval_report(42.0, 12.0)))
    data, markdown = build_summary(bundle, reports, None)
    assert data["eval"]["metrics"]["t2v"]["R1"] == 42.0
    assert "| t2v | 42.0 |" in markdown and "| motion subset t2v | 12.0 |" in markdown
    assert "| fp32 | - | 1.0000000 / - | 0.9999000 / - |" in markdown  # row, backend, cosine min / mean


def test_summary_of_an_eval_whose_subset_has_no_video(tmp_path):
    """A subset without evaluated videos (eval writes only a note for it) is a row of dashes, not a KeyError."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"model": {"name": "demo"}, "source_checkpoint": {"name": "ts2net/demo"},
                                                   "valid": True, "parity": {}}))
    report = _eval_report(42.0, 12.0)
    report["subsets"]["motion"] = {"n_videos": 0, "n_captions": 0, "note": "no evaluated video belongs to this subset"}
    (tmp_path / "reports" / "eval").mkdir(parents=True)
    (tmp_path / "reports" / "eval" / "eval-test.json").write_text(json.dumps(report))
    _, markdown = build_summary(bundle, tmp_path / "reports", None)
    assert "| motion subset t2v | - | - | - | - | - | - |" in markdown
    assert "| small_object subset t2v | 42.0 |" in markdown
