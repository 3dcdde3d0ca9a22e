"""The peftbench command line: `python -m pipeline run|validate|plan SPEC`, `status SWEEP`,
`report SWEEP|CSV`, `nightly`, `import-peft DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs import quiet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="peftbench: benchmark PEFT methods with evidence.")
    commands = parser.add_subparsers(dest="command", required=True)
    loud = argparse.ArgumentParser(add_help=False)
    loud.add_argument("--verbose", action="store_true", help="show the libraries' warnings and the cells' own output (quiet by default)")
    address = {"default": None, "help": "Ray cluster address (default: $RAY_ADDRESS, else a local Ray / this machine)"}
    tracking = {"default": None, "help": "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"}
    run = commands.add_parser("run", parents=[loud], help="run a sweep and print its comparison table")
    run.add_argument("spec", help="sweep file (YAML)")
    run.add_argument("--address", **address)
    run.add_argument("--tracking-uri", **tracking)
    run.add_argument("--checkpoint-dir", default=None, help="where cells checkpoint (default: the cache dir)")
    validate = commands.add_parser("validate", parents=[loud], help="check a sweep file; exit 2 with one line naming what is wrong")
    validate.add_argument("spec")
    validate.add_argument("--address", **address)
    plan = commands.add_parser("plan", parents=[loud], help="list a sweep's cells, which are already finished, and their cost; run nothing")
    plan.add_argument("spec")
    plan.add_argument("--address", **address)
    plan.add_argument("--tracking-uri", **tracking)
    plan.add_argument("--target-mde", type=float, default=None, metavar="POINTS", help="also print how many seeds bring the MDE down to POINTS")
    status = commands.add_parser("status", parents=[loud], help="done/running/failed/remaining cells of a sweep, from MLflow alone")
    status.add_argument("sweep", help="the sweep's name")
    status.add_argument("--tracking-uri", **tracking)
    report = commands.add_parser("report", parents=[loud], help="significance-tested comparison tables of a sweep (MLflow) or a results CSV")
    report.add_argument("source", help="a sweep's name, or a CSV: a saved results frame or a paper's table (../shared/claims)")
    report.add_argument("--format", choices=("md", "html", "tex", "csv"), default="md")
    report.add_argument("--baseline", default=None, help="the method every row is tested against (default: lora)")
    report.add_argument("--claims", default=None, help="a claims file (configs/claims/*.yaml): a verdict per claim")
    report.add_argument("--aso", action="store_true", help="add deepsig's ASO per task (slow)")
    report.add_argument("--tracking-uri", **tracking)
    nightly = commands.add_parser("nightly", parents=[loud], help="run the nightly suite as a new night; exit 1 on a significant regression vs an earlier night")
    nightly.add_argument("--spec", default="configs/nightly.yaml", help="the suite (default: configs/nightly.yaml)")
    nightly.add_argument("--against", default="last", help="`last` (the newest accepted nights, as many as the spec's gate.nights) or one nightly parent run's id")
    nightly.add_argument("--address", **address)
    nightly.add_argument("--tracking-uri", **tracking)
    nightly.add_argument("--out", default=None, help="also write nightly.md and nightly.html into this directory")
    suite = commands.add_parser("import-peft", parents=[loud], help="a sweep file from a peft method_comparison suite folder")
    suite.add_argument("dir", help="the suite folder: default_training_params.json and experiments/<method>/<name>/")
    suite.add_argument("--backbone", required=True, help="the backbone every row trains (a registered name, hub id or local path)")
    suite.add_argument("--tasks", default="arc_easy,openbookqa", help="comma-separated: trained on (their train splits) and scored on (default: arc_easy,openbookqa)")
    suite.add_argument("--n-examples", default="1000", help="training examples drawn from the tasks' train splits, or `full` (default: 1000)")
    suite.add_argument("--seeds", default=None, help="comma-separated seeds (default: the suite's own seed)")
    suite.add_argument("--gpus", type=float, default=0, help="GPUs per cell (default: 0; fp16 suites need them)")
    suite.add_argument("--name", default=None, help="the sweep's name (default: the folder's)")
    suite.add_argument("--out", default=None, help="write the sweep file here (default: standard output)")
    args = parser.parse_args(argv)
    quiet.configure(args.verbose)

    if args.command == "import-peft":
        from pipeline import peft_suite

        try:
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
            n = args.n_examples if args.n_examples == "full" else int(args.n_examples)
            sweep, ignored = peft_suite.import_suite(args.dir, args.backbone, args.tasks.split(","), seeds, n, args.name, args.gpus)
        except ValueError as err:  # SuiteError, a seed or count that is not a number
            print(f"error: {err}", file=sys.stderr)
            return 2
        if ignored:
            print(f"ignored: {', '.join(ignored)}", file=sys.stderr)
        text = peft_suite.dump(sweep)
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
        return 0

    if args.command == "nightly":
        from pipeline import cluster, spec, track
        from pipeline import nightly as nightly_runner

        uri = track.tracking_uri(args.tracking_uri)
        try:
            sweeps = spec.load_all(args.spec)
            for sweep in sweeps:
                spec.check_resources(args.spec, sweep, *cluster.nodes(args.address))
            gate = sweeps[0].gate or spec.GateSpec()
            refs = nightly_runner.history(uri, sweeps[0].name, args.against, gate.nights)
        except ValueError as err:  # SpecError, NightlyError
            print(f"error: {err}", file=sys.stderr)
            return 2
        return nightly_runner.nightly(args.spec, sweeps, uri, refs, args.address, args.out)

    if args.command == "report":
        from pipeline import compare, track

        try:
            print(compare.report(args.source, track.tracking_uri(args.tracking_uri), args.format,
                                 baseline=args.baseline, claims=args.claims, with_aso=args.aso))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0

    if args.command == "status":
        from pipeline import plan

        return plan.status(args.sweep, args.tracking_uri)

    from pipeline import cluster, spec

    try:
        sweeps = spec.load_all(args.spec)  # a file may hold several sweeps of one name (configs/nightly.yaml)
        nodes = cluster.nodes(args.address, None if args.command == "run" else sweeps[0].cluster)
        for sweep in sweeps:
            spec.check_resources(args.spec, sweep, *nodes)
    except spec.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"{args.spec}: ok, {len(spec.expand_all(sweeps))} cells")
        return 0

    if args.command == "plan":
        from pipeline import plan

        return plan.plan(sweeps, args.tracking_uri, *nodes, target_mde=args.target_mde)
    from pipeline import sweep as sweep_runner

    return sweep_runner.run(args.spec, args.address, args.tracking_uri, args.checkpoint_dir)


if __name__ == "__main__":
    sys.exit(main())
