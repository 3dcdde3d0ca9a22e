"""`python -m dashboards open SWEEP`: serve the MLflow UI on 127.0.0.1 and print the report's URL.

`python -m dashboards build SWEEP` rebuilds report.html from the store and logs it to the
sweep's newest parent run (the sweep driver does this after every run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from pipeline import track


def report_url(server: str, run) -> str:
    return f"{server.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("open", "serve the MLflow UI and print the report's URL"), ("build", "rebuild and log report.html")):
        command = commands.add_parser(name, help=text)
        command.add_argument("sweep", help="sweep name (the MLflow experiment)")
        command.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    commands.choices["open"].add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)

    uri = track.tracking_uri(args.tracking_uri)
    run = track.latest_sweep_run(uri, args.sweep)
    if run is None:
        print(f"error: no sweep named {args.sweep!r} in {uri}", file=sys.stderr)
        return 2
    if args.command == "build":
        from pipeline import compare

        results, items = compare.sweep_results(uri, args.sweep)
        tables_html = compare.log_report(uri, run.info.run_id, results, items)["html"]
        compare.log_html_report(uri, run.info.run_id, args.sweep, results, items, tables_html)
        print(f"logged report.html to run {run.info.run_id}")
        return 0
    if uri.startswith("http"):  # already a server: nothing to start
        print(report_url(uri, run))
        return 0
    server = f"http://127.0.0.1:{args.port}"
    print(f"report: {report_url(server, run)}\n(serving the MLflow UI for {uri}; Ctrl-C stops it)", flush=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
