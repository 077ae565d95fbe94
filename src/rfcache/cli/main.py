"""``rfcache <command>`` and the ``rfc-<command>`` aliases."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rfcache.cli import bench, calibrate, export, generate, run, show
from rfcache.cli._args import add_config_arguments, config_from_args

__all__ = ["bench_main", "calibrate_main", "export_main", "generate_main", "main", "run_main", "show_main"]


@dataclass(frozen=True)
class _Command:
    config: type
    run: Callable[[Any], Any]
    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    report: Callable[[Any, Any], str]


COMMANDS: dict[str, _Command] = {
    "show": _Command(show.ShowConfig, show.run_show, show.add_parser, show.report),
    "calibrate": _Command(calibrate.CalibrateConfig, calibrate.run_calibrate, calibrate.add_parser, calibrate.report),
    "generate": _Command(generate.GenerateConfig, generate.run_generate, generate.add_parser, generate.report),
    "export": _Command(export.ExportConfig, export.run_export, export.add_parser, export.report),
    "run": _Command(run.RunConfig, run.run_bundle, run.add_parser, run.report),
    "bench": _Command(bench.BenchCommandConfig, bench.run_bench_command, bench.add_parser, bench.report),
}


def _parser(only: str | None = None, prog: str = "rfcache") -> argparse.ArgumentParser:
    """``rfcache <command>``; with ``only``, an alias such as ``rfc-calibrate`` whose usage names itself."""
    parser = argparse.ArgumentParser(prog=prog, description="Relational Feature Caching for diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        if only is None or name == only:
            p = command.add_parser(sub)
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            if only is not None:
                p.prog = prog  # the alias's usage reads "rfc-calibrate ...", not "rfcache calibrate"
            p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
            add_config_arguments(p, command.config)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, command: str | None = None) -> int:
    """Run one command; expected failures print one line and return 2."""
    from rfcache.cli._parallel import check_launch, is_lead, report_error
    from rfcache.devices import check_device
    from rfcache.errors import RfcacheError

    argv = list(sys.argv[1:] if argv is None else argv)
    if command is not None:
        argv = [command, *argv]
    parser = _parser(command, prog or "rfcache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    cmd = COMMANDS[args.command]
    cfg = config_from_args(cmd.config, args)
    name = prog or f"rfcache {args.command}"
    try:
        check_launch(args.command, cfg)  # under torchrun: what runs split, and rank 0 alone speaks
        if isinstance(getattr(cfg, "device", None), str):  # before anything is loaded or written
            check_device(cfg.device)
        result = cmd.run(cfg)
    except (RfcacheError, FileNotFoundError) as exc:
        report_error(f"{name}: error: {exc}")
        return 2
    if is_lead():
        print(cmd.report(cfg, result))
    return 0


def calibrate_main() -> None:
    sys.exit(main(prog="rfc-calibrate", command="calibrate"))


def show_main() -> None:
    sys.exit(main(prog="rfc-show", command="show"))


def generate_main() -> None:
    sys.exit(main(prog="rfc-generate", command="generate"))


def export_main() -> None:
    sys.exit(main(prog="rfc-export", command="export"))


def run_main() -> None:
    sys.exit(main(prog="rfc-run", command="run"))


def bench_main() -> None:
    sys.exit(main(prog="rfc-bench", command="bench"))


if __name__ == "__main__":
    sys.exit(main())
