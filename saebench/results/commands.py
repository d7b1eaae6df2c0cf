"""The ``saebench`` commands that read a results folder (see saebench.cli for the rest)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from saebench.results.leaderboard import View, render

    if args.details or args.scorer:
        from saebench.results.leaderboard import details_json

        text = details_json(args.output, args.scorer)
    elif args.reliability:
        from saebench.results.intervals import RELIABILITY_COLUMNS, reliability
        from saebench.results.leaderboard import leaderboard_rows, table

        text = table(RELIABILITY_COLUMNS, reliability(*leaderboard_rows(args.output)), args.format)
    else:
        compact = args.format == "markdown" and not args.file and sys.stdout.isatty() and not (args.all or args.columns)
        view = View(ci=args.ci, level=args.ci_level, resamples=args.resamples, columns=args.columns, compact=compact)
        text = render(
            args.output, args.format, sort=args.sort, descending=args.descending, latents=args.latents, view=view
        )
        if args.format != "markdown":
            for note in view.notes:
                print(note, file=sys.stderr)
    if args.file:
        Path(args.file).write_text(text + "\n")
    else:
        print(text)
    return 0


def _cmd_compare_saes(args: argparse.Namespace) -> int:
    from saebench.results.intervals import COMPARE_COLUMNS, compare_saes
    from saebench.results.leaderboard import table

    rows = compare_saes(
        args.output, args.a, args.b, args.metric, level=args.ci_level, resamples=args.resamples, seed=args.seed
    )
    print(table(COMPARE_COLUMNS, rows, args.format))
    if not rows:
        print("no metric with per-unit statistics for both SAEs", file=sys.stderr)
    if not args.metric:
        for column, why in _not_compared(args.output, args.a, args.b).items():
            print(f"not compared: {column}: {why}", file=sys.stderr)
    return 0


def _not_compared(output: str, a: str, b: str) -> dict[str, str]:
    """The headline metrics of SAEs ``a`` and ``b`` that have no interval, with why."""
    from saebench.results.intervals import StoredUnits, find_sae, without_interval
    from saebench.results.leaderboard import leaderboard_rows

    columns, rows = leaderboard_rows(output)
    keys = [(r["model"], r["hookpoint"], r["sae"]) for r in rows]
    pair = {find_sae(keys, a), find_sae(keys, b)}
    return without_interval(StoredUnits.load(output), columns, [r for k, r in zip(keys, rows) if k in pair])


def _cmd_fit(args: argparse.Namespace) -> int:
    from saebench.results.fit import render_fit

    print(render_fit(args.output, args.metric, args.x, args.by, args.format, resamples=args.resamples, seed=args.seed))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from saebench.results.pairs import render_pairs

    text = render_pairs(args.output, args.format, ci=args.ci, level=args.ci_level, resamples=args.resamples)
    print(text)
    return 0


def add_result_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that read a results folder: leaderboard, compare-saes, compare, fit."""
    p = sub.add_parser("leaderboard", help="print the results of a run as a table")
    p.add_argument("output", help="the matrix's output folder")
    p.add_argument("--format", default="csv", choices=["csv", "json", "markdown"])
    p.add_argument("--sort", help="column to sort by, e.g. reconstruction.explained_variance")
    p.add_argument("--descending", action="store_true", help="largest first")
    p.add_argument(
        "--latents",
        action="store_true",
        help="one row per explained latent: explanations and per-latent interpretability scores",
    )
    p.add_argument(
        "--details",
        action="store_true",
        help="each cell's details as JSON instead (TreeProbe's trees and rules, per-task results)",
    )
    p.add_argument("--scorer", help="with --details: only this scorer's cells")
    p.add_argument("--output", dest="file", help="write to this file instead of stdout")
    p.add_argument("--ci", action="store_true", help="add METRIC.ci_low and METRIC.ci_high (bootstrap intervals)")
    _add_bootstrap(p)
    p.add_argument(
        "--columns", metavar="GLOBS", help="metric columns to show, e.g. 'sparsity.*,downstream.ce_loss_score'"
    )
    p.add_argument("--all", action="store_true", help="every column (the default except for markdown to a terminal)")
    p.add_argument(
        "--reliability",
        action="store_true",
        help="per repeated metric (matrix seeds:), how well the SAEs' ranking agrees between seeds",
    )
    p.set_defaults(func=_cmd_leaderboard)

    p = sub.add_parser("compare-saes", help="whether two SAEs differ beyond noise, metric by metric (paired bootstrap)")
    p.add_argument("output", help="the matrix's output folder")
    p.add_argument("a", help="SAE name (MODEL/HOOKPOINT/SAE when the name is at several hook points)")
    p.add_argument("b", help="the SAE to compare it with")
    p.add_argument("--metric", action="append", metavar="COLUMN", help="e.g. downstream.ce_loss_score (repeatable; "
                   "default: every headline metric both have intervals for)")  # fmt: skip
    p.add_argument("--format", default="markdown", choices=["csv", "json", "markdown"])
    _add_bootstrap(p)
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    p.set_defaults(func=_cmd_compare_saes)

    p = sub.add_parser("fit", help="fit scaling laws of a metric in SAE width (Gao et al. 2024), with bootstrap CIs")
    p.add_argument("output", help="the matrix's output folder")
    p.add_argument("--metric", required=True, metavar="COLUMN", help="e.g. reconstruction.fvu")
    p.add_argument("--x", default="d_sae", help="the SAE config field on the x axis (default d_sae)")
    p.add_argument("--by", help="a config field to group by (e.g. k); with 2 groups or more, also the joint law")
    p.add_argument("--format", default="markdown", choices=["csv", "json", "markdown"])
    p.add_argument("--resamples", type=_positive, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("compare", help="SAE-to-SAE similarity of a run's compare cells, one row per ordered pair")
    p.add_argument("output", help="the matrix's output folder")
    p.add_argument("--format", default="markdown", choices=["csv", "json", "markdown"])
    p.add_argument("--ci", action="store_true", help="add METRIC.ci_low and METRIC.ci_high (bootstrap over latents)")
    _add_bootstrap(p)
    p.set_defaults(func=_cmd_compare)


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ci-level", type=_level, default=0.95, metavar="L", help="interval level (default 0.95)")
    p.add_argument("--resamples", type=_positive, default=1000, metavar="N", help="bootstrap resamples (default 1000)")


def _level(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
