"""``ctfleet cost --month YYYY-MM --by facility|study|day``: finance's door.

Through the API with a finance token (``GET /cost``: the caller's facility), or with
``--direct`` from the tables themselves (an operator with AWS credentials: every facility,
and the fleet's total beside what was allocated). The figures are those of
:mod:`ctfleet.aws.costs`: direct GPU cost, interrupted work, shared overhead, fully loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from ctfleet.aws.costs import BY, check_month
from ctfleet.settings import Settings

from .client import print_columns

COLUMNS = ("studies", "gpu_seconds", "direct_usd", "interrupted_usd", "overhead_usd", "loaded_usd")


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("cost", help="GPU cost per study: direct and fully loaded, by facility, study or day")
    p.add_argument("--month", default=time.strftime("%Y-%m", time.gmtime()), help="YYYY-MM (default: this month)")
    p.add_argument("--by", choices=BY, default="facility")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG chart of cost per day and studies")
    p.add_argument("--direct", action="store_true", help="read the tables (operator), not the API")
    p.add_argument("--api", default=None, help="the API's base URL (default: CTFLEET_API_URL + /api)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding a finance token (or CTFLEET_TOKEN)")


def figures(args: argparse.Namespace, settings: Settings, by: str) -> dict[str, Any]:
    if args.direct:
        from ctfleet.aws.clients import Clients
        from ctfleet.aws.costs import read_report
        from ctfleet.aws.records import Table

        clients = Clients(settings)
        report = read_report(Table(clients.dynamodb, settings.ledger_table),
                             Table(clients.dynamodb, settings.studies_table), args.month)
        return report.to_json(by)
    from .backfill.command import client_from

    return client_from(args, settings).get_cost(args.month, by)


def command(args: argparse.Namespace, settings: Settings) -> int:
    check_month(args.month)
    out = figures(args, settings, args.by)
    if args.plot is not None:
        plot(figures(args, settings, "day") if args.by != "day" else out, args.plot)
        print(f"cost: chart written to {args.plot}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(out, sort_keys=True))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, _keys(args.by) + list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(out["rows"])
    else:
        _table(out, args.by)
    return 0


def _keys(by: str) -> list[str]:
    return ["study_key", "facility", "day"] if by == "study" else [by]


def _table(out: dict[str, Any], by: str) -> None:
    header = _keys(by) + list(COLUMNS)
    cells = [[str(r.get(c, "")) for c in header] for r in out["rows"]]
    print_columns(header, cells)
    tail = f"{out['month']}: {out['total_loaded_usd']} USD fully loaded"
    if "fleet_usd" in out:
        tail += f"; fleet {out['fleet_usd']} USD on {out['instances']} instance(s), unallocated {out['unallocated_usd']}"
    print(tail)


def plot(day_figures: dict[str, Any], path: Path) -> None:
    """Fully loaded cost per day as bars (direct cost inside them), studies per day as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = day_figures["rows"]
    days = [r["day"][5:] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(rows) + 3), 4.0), dpi=120)
    ax.bar(days, [float(r["loaded_usd"]) for r in rows], color="#9ecae1", label="fully loaded")
    ax.bar(days, [float(r["direct_usd"]) for r in rows], color="#3182bd", label="direct GPU", width=0.5)
    ax.set_ylabel("USD")
    ax.set_xlabel(f"day of {day_figures['month']} (UTC)")
    ax.tick_params(axis="x", rotation=60)
    counts = ax.twinx()
    counts.plot(days, [r["studies"] for r in rows], color="#e6550d", marker="o", label="studies")
    counts.set_ylabel("studies")
    counts.set_ylim(bottom=0, top=max([r["studies"] for r in rows], default=1) * 1.15)
    counts.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(top=max([float(r["loaded_usd"]) for r in rows], default=1.0) * 1.15 or 1.0)
    handles = ax.get_legend_handles_labels()[0] + counts.get_legend_handles_labels()[0]
    fig.legend(handles, [str(h.get_label()) for h in handles], loc="lower center", ncol=3, frameon=False)
    total = float(day_figures["total_loaded_usd"])
    ax.set_title(f"GPU cost per day, {day_figures['month']}: {total:,.4f} USD fully loaded, "
                 f"{sum(r['studies'] for r in rows)} studies")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)
