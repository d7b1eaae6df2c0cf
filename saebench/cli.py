"""The ``saebench`` command. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from saebench.errors import ConfigError, Interrupted, SaebenchError
from saebench.results.commands import add_result_commands


def _cmd_plugins(args: argparse.Namespace) -> int:
    from saebench.plugin_manager import get_registry

    registry = get_registry()
    if args.options:
        return _print_options(registry, args.options, args.json)
    rows = registry.all()
    if args.json:
        print(
            json.dumps(
                {
                    "plugins": [
                        {
                            "kind": i.kind,
                            "name": i.name,
                            "source": i.source,
                            "version": i.version,
                            "plugin": i.plugin,
                            "description": i.description,
                        }
                        for i in rows
                    ],
                    "failures": [{"plugin": f.plugin, "source": f.source, "error": f.error} for f in registry.failures],
                },
                indent=2,
            )
        )
        return 0
    table = [("KIND", "NAME", "FROM", "DESCRIPTION")]
    table += [
        (i.kind, i.name, i.source if i.source == "built-in" else f"{i.source} {i.version}", i.description) for i in rows
    ]
    widths = [max(len(r[c]) for r in table) for c in range(3)]
    for r in table:
        print("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])
    for f in registry.failures:
        print(f"failed to load plugin {f.plugin} ({f.source}): {f.error}", file=sys.stderr)
    return 0


def _print_options(registry, name: str, as_json: bool) -> int:
    """``saebench plugins --options NAME`` (or ``KIND.NAME``): each matching plugin's options, from its model."""
    from saebench.options import describe

    kind, _, short = name.rpartition(".")
    found = [i for i in registry.all() if i.name == short and kind in ("", i.kind)]
    if not found:
        raise ConfigError(f"no plugin named {name!r}; saebench plugins lists them", "--options")
    described = [(i, describe(i.obj.Options) if hasattr(i.obj, "Options") else []) for i in found]
    if as_json:
        print(json.dumps([{"kind": i.kind, "name": i.name, "options": rows} for i, rows in described], indent=2))
        return 0
    for i, rows in described:
        print(f"{i.kind} {i.name}: {i.description}")
        if not rows:
            print("  (no options)")
        columns = ("name", "type", "default", "constraints", "description")
        table = [tuple(c.upper() for c in columns)] + [tuple(r[c] for c in columns) for r in rows]
        widths = [max(len(t[c]) for t in table) for c in range(4)]
        for t in table:
            print("  " + "  ".join(t[c].ljust(widths[c]) for c in range(4)) + "  " + t[4])
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from saebench.loading import load_sae

    sae = load_sae(args.path, args.format, allow_pickle=args.allow_pickle)
    dec_norms = sae.W_dec.detach().float().norm(dim=-1)
    info = {
        **sae.cfg.model_dump(mode="json"),
        "decoder_row_norm": {
            "min": dec_norms.min().item(),
            "mean": dec_norms.mean().item(),
            "max": dec_norms.max().item(),
        },
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0


def _quiet_third_party() -> None:
    """--quiet: no progress bars from Hugging Face libraries either (transformers draws one while loading weights)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub, and so transformers, at import
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _cmd_run(args: argparse.Namespace) -> int:
    from saebench.results.leaderboard import View, render
    from saebench.run.execute import run_matrix
    from saebench.run.matrix import load_matrix

    if args.quiet:
        _quiet_third_party()
    report = run_matrix(args.matrix, quiet=args.quiet, dry_run=args.dry_run)
    if not args.quiet and not args.dry_run:
        print(render(load_matrix(args.matrix).output, "markdown", view=View(compact=sys.stdout.isatty())))
        print(
            f"\n{report.done} cell(s) computed, {report.skipped} already finished, {len(report.failed)} failed",
            file=sys.stderr,
        )
    return report.exit_code


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from saebench.run.execute import execute
    from saebench.run.matrix import parse_matrix
    from saebench.run.progress import Progress

    train = {"arch": args.arch, "d_sae": args.d_sae, "tokens": args.tokens}
    for key in ("k", "l1", "l0", "lr", "batch_size", "seed"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    data = {"source": args.data_source, "tokens": args.context_length, "context_length": args.context_length}
    for item in args.data or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", "--data")
        data[key] = yaml.safe_load(value)
    matrix = parse_matrix(
        {
            "name": "train",
            "output": args.output,
            "cache_dir": args.cache_dir,
            "data": data,
            "models": [{"name": "model", "adapter": args.adapter, "path": args.model, "hookpoints": [args.hookpoint]}],
            "saes": [{"name": args.name, "model": "model", "hookpoint": args.hookpoint, "train": train}],
        },
        "saebench train",
    )
    if args.quiet:
        _quiet_third_party()
    execute(matrix, source="saebench train", progress=Progress(enabled=not args.quiet))
    print(Path(args.output) / "saes" / args.name)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from saebench.results.report import write_report

    print(write_report(args.output, args.file, latents=args.latents))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saebench", description="Evaluate sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every registered plugin, or one plugin's options")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--options",
        metavar="NAME",
        help="the options of the plugin NAME (or KIND.NAME): types, defaults, constraints and descriptions",
    )
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("run", help="evaluate every cell of a matrix file (resumable)")
    p.add_argument("matrix", help="matrix YAML file")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no leaderboard")
    p.add_argument("--dry-run", action="store_true", help="print the stages and cells that would run; compute nothing")
    p.set_defaults(func=_cmd_run)

    _add_train(sub)

    add_result_commands(sub)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run (tables, plots, latents, trees)")
    p.add_argument("output", help="the matrix's output folder")
    p.add_argument(
        "-o", "--output", dest="file", metavar="FILE", help="HTML file to write (default OUTPUT/report.html)"
    )
    p.add_argument("--latents", type=int, default=50, metavar="N", help="latent cards per SAE (default 50)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("inspect", help="load an SAE checkpoint (any format) and print its config")
    p.add_argument("path", help="checkpoint file or folder")
    p.add_argument("--format", default="auto", help="loader name (default: detect)")
    p.add_argument("--allow-pickle", action="store_true", help="read .pt pickles (with torch.load weights_only=True)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_inspect)

    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one SAE on a model's activations and save it (native format)")
    p.add_argument("--model", required=True, help="model path, hub id, .gguf or embedded:NAME")
    p.add_argument("--adapter", default="hf-causal-lm")
    p.add_argument("--hookpoint", required=True, help="e.g. layers.6")
    p.add_argument(
        "--arch",
        required=True,
        help="relu, topk, jumprelu, batchtopk, matryoshka_batchtopk, gated or a plugin's architecture",
    )
    p.add_argument("--d-sae", type=int, required=True)
    p.add_argument("--tokens", type=int, required=True, help="training tokens")
    p.add_argument("--k", type=int)
    p.add_argument("--l1", type=float)
    p.add_argument("--l0", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--data-source", default="python-stdlib")
    p.add_argument(
        "--data",
        action="append",
        metavar="KEY=VALUE",
        help="a data-source option, value in YAML (e.g. --data 'paths=[corpus/*.txt]'); repeatable",
    )
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--name", default="sae", help="folder name of the trained SAE under OUTPUT/saes/")
    p.add_argument("--output", default="runs/train")
    p.add_argument("--cache-dir", help="activation cache (default OUTPUT/cache)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)


def _terminate(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (
        threading.current_thread() is threading.main_thread()
    ):  # SIGTERM unwinds like Ctrl-C (a test may call main in a thread)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except SaebenchError as exc:
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever a key or file held
        print(f"saebench: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        report = getattr(exc, "report", None)
        done = "" if report is None else f": {report.summary()}; run it again to resume"
        print(f"saebench: interrupted by {signal.Signals(signum).name}{done}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
