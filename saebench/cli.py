"""The ``saebench`` command. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from saebench.errors import SaebenchError


def _cmd_plugins(args: argparse.Namespace) -> int:
    from saebench.plugin_manager import get_registry

    registry = get_registry()
    rows = sorted(registry.entries.values(), key=lambda i: (i.kind, i.name))
    if args.json:
        print(json.dumps({
            "plugins": [
                {"kind": i.kind, "name": i.name, "source": i.source, "version": i.version,
                 "plugin": i.plugin, "description": i.description}
                for i in rows
            ],
            "failures": [{"plugin": f.plugin, "source": f.source, "error": f.error} for f in registry.failures],
        }, indent=2))
        return 0
    table = [("KIND", "NAME", "FROM", "DESCRIPTION")]
    table += [(i.kind, i.name, i.source if i.source == "built-in" else f"{i.source} {i.version}", i.description) for i in rows]
    widths = [max(len(r[c]) for r in table) for c in range(3)]
    for r in table:
        print("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])
    for f in registry.failures:
        print(f"failed to load plugin {f.plugin} ({f.source}): {f.error}", file=sys.stderr)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from saebench.loading import load_sae

    sae = load_sae(args.path, args.format, allow_pickle=args.allow_pickle)
    dec_norms = sae.W_dec.detach().float().norm(dim=-1)
    info = {
        **sae.cfg.model_dump(mode="json"),
        "decoder_row_norm": {"min": dec_norms.min().item(), "mean": dec_norms.mean().item(), "max": dec_norms.max().item()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saebench.demo import run_demo

    run_demo(tokens=args.tokens, d_in=args.d_in, d_sae=args.d_sae, k=args.k, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saebench", description="Evaluate sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every registered plugin")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("inspect", help="load an SAE checkpoint (any format) and print its config")
    p.add_argument("path", help="checkpoint file or folder")
    p.add_argument("--format", default="auto", help="loader name (default: detect)")
    p.add_argument("--allow-pickle", action="store_true", help="read .pt pickles (with torch.load weights_only=True)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("demo", help="save SAEs in every format, load them back, encode, print a table")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SaebenchError as exc:
        print(f"saebench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("saebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
