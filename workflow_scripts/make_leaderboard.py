#!/usr/bin/env python3
"""Leaderboard table: this workflow's figures on a benchmark's task beside the benchmark's
published figures (another pipeline, not run here), for the tasks with a leaderboard
(deepbc.results.leaderboard).
"""

import json

from deepbc.jobs import cli


def arguments(p):
    p.add_argument("--metrics", required=True, nargs="+", help="metrics JSONs of the leaderboard tasks' runs")
    p.add_argument("--pooled", required=True, nargs="+",
                   help="results/metrics/{run}/{arch}/pooled.json of those runs")
    p.add_argument("--models", required=True, nargs="+",
                   help="results/models/{run}/{arch}/fold{k}/settings.json of those runs (how each was trained)")
    p.add_argument("--leaderboards", required=True, type=json.loads,
                   help='JSON {task: leaderboard}, e.g. {"breakhis_eva_finetune": "eva_breakhis"}')
    p.add_argument("--out-csv", required=True, help="results/tables/leaderboard.csv")
    p.add_argument("--out-md", required=True, help="results/tables/leaderboard.md")


def run(args):
    from deepbc.results import leaderboard

    table = leaderboard.leaderboard_table(args.metrics, args.pooled, args.models, args.leaderboards)
    leaderboard.write_leaderboard(table, args.out_csv, args.out_md)


main = cli.script(__doc__, arguments, run)

if __name__ == "__main__":
    cli.run(main)
