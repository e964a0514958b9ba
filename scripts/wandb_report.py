"""A W&B report of a study or sweep: its training runs grouped by activation, and the study's own statistics.

    python scripts/wandb_report.py experiments/<study> [--project polycom --entity <you> --group <W&B group>]
    python scripts/wandb_report.py experiments/<study> --offline --out <dir>    # write what it would create

W&B can average a group of runs and draw their spread (min-max, std, standard error), but it cannot compute a
confidence interval over a seed group, nor a paired test. So the report has two parts:

1. the training runs (the sweep's W&B runs, found by their group), grouped by activation: validation and training
   loss against tokens (mean of the seeds, std band) and each task's headline accuracy (mean, std);
2. one more W&B run (job type ``summary``, in the same group) that uploads this project's numbers: the summary
   table (mean, 95% interval, paired difference to the baseline, p, Holm-corrected p and verdict), the validation-loss
   gap to the baseline at every point with its 95% interval (as a table and as ``gap/<activation>/...`` curves over
   ``tokens``), and the study's plots as images.

Online (the default; needs ``wandb login``) it logs the summary run, then saves the report and prints its URL.
``--offline --out DIR`` touches no network: the summary run is written as an offline W&B run under ``DIR/wandb``
(``wandb sync`` uploads it later), the report's specification as ``DIR/report.json`` (every block and panel, with
the run-set filters and grouping), the tables as ``DIR/tables/<name>.json`` and the plots under ``DIR/images``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

from polycom.report.curves import gap_curves, gap_table
from polycom.report.plots import headline_metrics, write_plots
from polycom.report.runs import add_by_option, load_runs_or_exit, run_config
from polycom.report.tables import SUMMARY_COLUMNS, ordered_activations, summary_rows

SUMMARY_JOB = "summary"
GROUP_BY = "config.activation.name"  # W&B stores the run config nested: activation.value.name


def logger_setting(rows: list[dict], key: str) -> str | None:
    """The runs' ``logger.<key>`` (project, entity, group); an error when the runs disagree."""
    values = {run_config(row["run_dir"]).get(f"logger.{key}") for row in rows}
    if len(values) > 1:
        raise ValueError(f"the runs have different logger.{key}: {sorted(map(str, values))}; pass --{key}")
    return values.pop()


def _plain(value):
    """A table cell for W&B: NaN becomes None (an empty cell), numbers stay numbers."""
    return None if isinstance(value, float) and math.isnan(value) else value


def tables(rows: list[dict], baseline: str, by: list[str]) -> dict[str, tuple[list[str], list[list]]]:
    """``{name: (columns, rows)}``: the summary table and, without ``by``, the gap curves."""
    summary = summary_rows(rows, baseline, by)
    columns = list(by) + SUMMARY_COLUMNS
    out = {"summary_table": (columns, [[_plain(r.get(c)) for c in columns] for r in summary])}
    curves = [] if by else gap_curves(rows, baseline)
    if curves:
        gap_columns, gap_rows = gap_table(curves)
        out["val_loss_gap_table"] = (gap_columns, [[_plain(v) for v in row] for row in gap_rows])
    return out


def gap_series(gap: tuple[list[str], list[list]]) -> list[dict]:
    """The gap curves as W&B history rows: one per token count, ``gap/<activation>/{mean,ci95_low,ci95_high}``."""
    columns, rows = gap
    points: dict[int, dict] = {}
    for row in rows:
        record = dict(zip(columns, row))
        point = points.setdefault(record["tokens"], {"tokens": record["tokens"]})
        for name in ("mean", "ci95_low", "ci95_high"):
            point[f"gap/{record['activation']}/{name}"] = record["mean_gap" if name == "mean" else name]
    return [points[t] for t in sorted(points)]


def build_report(title: str, project: str, entity: str | None, group: str, rows: list[dict], baseline: str,
                 by: list[str], table_names: list[str], image_keys: list[str], activations: list[str]):
    import wandb_workspaces.reports.v2 as wr

    runs = wr.Runset(entity=entity or "", project=project, name="training runs",
                     filters=f"Group == '{group}' and JobType != '{SUMMARY_JOB}'", groupby=[GROUP_BY]
                     + [f"config.{key}" for key in by])
    summary_run = wr.Runset(entity=entity or "", project=project, name="summary",
                            filters=f"Group == '{group}' and JobType == '{SUMMARY_JOB}'")
    spread = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    training = [wr.LinePlot(title=f"{name} (mean of the seeds, std band)", x="tokens", y=[key], **spread)
                for name, key in (("validation loss", "val_loss"), ("training loss", "loss"))]
    accuracy = headline_metrics(rows)
    if accuracy:
        training.append(wr.BarPlot(title="headline accuracy per task (mean of the seeds, std)", metrics=accuracy,
                                   orientation="v", **spread))
    statistics = [wr.LinePlot(title=f"{act} − {baseline}: validation-loss gap, mean and 95% CI over seeds",
                              x="tokens", y=[f"gap/{act}/{name}" for name in ("mean", "ci95_low", "ci95_high")])
                  for act in activations if act != baseline and "val_loss_gap_table" in table_names]
    statistics += [wr.WeavePanelSummaryTable(table_name=name) for name in table_names]
    if image_keys:
        statistics.append(wr.MediaBrowser(title="plots (95% intervals)", media_keys=image_keys))
    return wr.Report(project=project, entity=entity or "", title=title,
                     description=f"W&B group {group!r}: runs grouped by activation; 95% intervals, paired tests "
                                 f"against {baseline} and Holm-corrected verdicts computed by polycom.report",
                     blocks=[
                         wr.H1(title),
                         wr.P("Training runs grouped by activation. W&B draws the mean of a group and its spread "
                              "(here the standard deviation over seeds); it cannot compute a confidence interval over "
                              "seeds, so the 95% intervals and tests are in the second part."),
                         wr.PanelGrid(runsets=[runs], panels=training),
                         wr.H2(f"Statistics over seeds (paired against {baseline})"),
                         wr.P("Uploaded by scripts/wandb_report.py from the same runs: the summary table (mean, 95% "
                              "interval, paired difference, p, Holm-corrected p and verdict), the validation-loss gap "
                              "with its 95% interval at every point, and the study's plots."),
                         wr.PanelGrid(runsets=[summary_run], panels=statistics),
                     ])


def spec(obj):
    """A report object as plain JSON: each block and panel as ``{"type": <class>, <its set fields>}`` (W&B's own
    serialization needs the API; this is what ``Report.save`` would send, field for field)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: spec(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
        return {"type": type(obj).__name__, **{k: v for k, v in fields.items() if v not in (None, [], {}, "")}}
    if isinstance(obj, (list, tuple)):
        return [spec(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): spec(v) for k, v in obj.items()}
    return obj if isinstance(obj, (str, int, float, bool)) or obj is None else str(obj)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a study folder (the runs in its runs/) or a sweep folder")
    parser.add_argument("--project", help="W&B project (default: the runs' logger.project)")
    parser.add_argument("--entity", help="W&B entity (default: the runs' logger.entity, else your default)")
    parser.add_argument("--group", help="the runs' W&B group (default: their logger.group)")
    parser.add_argument("--title", help="report title (default: the folder's name)")
    parser.add_argument("--baseline", default="swiglu")
    parser.add_argument("--offline", action="store_true", help="no network: write everything into --out")
    parser.add_argument("--out", type=Path, help="where the offline output goes (with --offline)")
    add_by_option(parser)
    args = parser.parse_args(argv)
    if args.offline != (args.out is not None):
        parser.error("--offline and --out go together")
    # a study folder holds its runs in runs/ (and may hold other sweeps, as the BabyLM study's lr-grid/)
    rows = load_runs_or_exit(parser, [args.root / "runs" if (args.root / "runs").is_dir() else args.root], args.by)
    try:
        project = args.project or logger_setting(rows, "project") or "polycom"
        entity = args.entity or logger_setting(rows, "entity")
        group = args.group or logger_setting(rows, "group")
    except ValueError as error:
        parser.error(str(error))
    if not group:
        parser.error("the runs' config has no logger.group (a sweep's W&B group is <task_name>-<sweep folder>): "
                     "pass --group")
    title = args.title or args.root.resolve().name
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"wandb_report-{title}"
    out.mkdir(parents=True, exist_ok=True)

    made = tables(rows, args.baseline, args.by)
    (out / "tables").mkdir(exist_ok=True)
    for name, (columns, data) in made.items():
        (out / "tables" / f"{name}.json").write_text(json.dumps({"columns": columns, "data": data}, indent=1) + "\n")
    images = write_plots(rows, out / "images", args.baseline, args.by)
    image_keys = [f"plots/{path.stem}" for path in images]

    import wandb

    run = wandb.init(project=project, entity=entity, group=group, job_type=SUMMARY_JOB, name=f"{title}-summary",
                     config={"study": title, "baseline": args.baseline, "runs": len(rows), "by": list(args.by)},
                     dir=str(out), mode="offline" if args.offline else os.environ.get("WANDB_MODE", "online"),
                     reinit="finish_previous")
    for point in gap_series(made["val_loss_gap_table"]) if "val_loss_gap_table" in made else []:
        run.log(point)
    run.log({**{name: wandb.Table(columns=columns, data=data) for name, (columns, data) in made.items()},
             **{key: wandb.Image(str(path)) for key, path in zip(image_keys, images)}})
    run.finish()

    activations = ordered_activations(rows)
    report = build_report(title, project, entity, group, rows, args.baseline, args.by, list(made), image_keys,
                          activations)
    specification = spec(report)
    (out / "report.json").write_text(json.dumps(specification, indent=1) + "\n")
    if args.offline:
        print(f"wrote {out}/report.json, tables/, images/ and the offline summary run under {out}/wandb "
              f"(upload it with `wandb sync`, then run this again without --offline to save the report)")
    else:
        report.save()
        print(f"report: {report.url}")
    return specification


if __name__ == "__main__":
    main()
