"""The peftbench command line: `python -m pipeline run|validate SPEC`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="peftbench: benchmark PEFT methods with evidence.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a sweep and print its comparison table")
    run.add_argument("spec", help="sweep file (YAML)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    validate = commands.add_parser("validate", help="check a sweep file; exit 2 with one line naming what is wrong")
    validate.add_argument("spec")
    args = parser.parse_args(argv)

    from pipeline import spec

    try:
        sweep = spec.load(args.spec)
    except spec.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"{args.spec}: ok, {len(spec.expand(sweep))} cells")
        return 0

    from pipeline import sweep as sweep_runner

    return sweep_runner.run(args.spec, args.address, args.tracking_uri)


if __name__ == "__main__":
    sys.exit(main())
