"""``rfcache <command>`` and the ``rfc-<command>`` aliases."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
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
    # flags given on the command line -> one line if one is not used or contradicts another
    check: Callable[[Any, set[str]], None] | None = None
    # what to print after "interrupted" (how to resume), or None
    interrupted: Callable[[Any], str | None] | None = None


COMMANDS: dict[str, _Command] = {
    "show": _Command(show.ShowConfig, show.run_show, show.add_parser, show.report),
    "calibrate": _Command(
        calibrate.CalibrateConfig,
        calibrate.run_calibrate,
        calibrate.add_parser,
        calibrate.report,
        calibrate.check_flags,
        calibrate.resume_hint,
    ),
    "generate": _Command(
        generate.GenerateConfig, generate.run_generate, generate.add_parser, generate.report, generate.check_flags
    ),
    "export": _Command(export.ExportConfig, export.run_export, export.add_parser, export.report),
    "run": _Command(run.RunConfig, run.run_bundle, run.add_parser, run.report, run.check_flags),
    "bench": _Command(
        bench.BenchCommandConfig, bench.run_bench_command, bench.add_parser, bench.report, bench.check_flags
    ),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: ...``) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _version() -> str:
    from rfcache._version import __version__

    return __version__


def _parser(only: str | None = None, prog: str = "rfcache") -> argparse.ArgumentParser:
    """``rfcache <command>``; with ``only``, an alias such as ``rfc-calibrate`` whose usage names itself."""
    parser = _Parser(prog=prog, description="Relational Feature Caching for diffusion transformers.")
    parser.add_argument("--version", action="version", version=f"rfcache {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        if only is None or name == only:
            p = command.add_parser(sub)
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            if only is not None:
                p.prog = prog  # the alias's usage reads "rfc-calibrate ...", not "rfcache calibrate"
            p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
            p.add_argument("--version", action="version", version=f"rfcache {_version()}")
            add_config_arguments(p, command.config)
    return parser


def _given(argv: list[str], only: str | None, prog: str) -> set[str]:
    """The config fields set on the command line (as opposed to left at their defaults)."""
    parser = _parser(only, prog)
    for sub in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for action in sub._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "verbose"}


def main(argv: Sequence[str] | None = None, *, prog: str | None = None, command: str | None = None) -> int:
    """Run one command; expected failures print one line and return 2, Ctrl-C one line and 130."""
    from rfcache.cli._parallel import check_launch, is_lead, report_error
    from rfcache.devices import check_device
    from rfcache.errors import RfcacheError

    argv = list(sys.argv[1:] if argv is None else argv)
    if command is not None:
        argv = [command, *argv]
    parser = _parser(command, prog or "rfcache")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a flag argparse refused (2, one line printed)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    cmd = COMMANDS[args.command]
    name = prog or f"rfcache {args.command}"
    cfg = None
    try:
        cfg = config_from_args(cmd.config, args)
        if cmd.check is not None:
            cmd.check(cfg, _given(argv, command, prog or "rfcache"))
        check_launch(args.command, cfg)  # under torchrun: what runs split, and rank 0 alone speaks
        if isinstance(getattr(cfg, "device", None), str):  # before anything is loaded or written
            check_device(cfg.device)
        result = cmd.run(cfg)
        text = cmd.report(cfg, result)
    except (RfcacheError, FileNotFoundError) as exc:
        report_error(f"{name}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        hint = cmd.interrupted(cfg) if cmd.interrupted is not None and cfg is not None else None
        print(f"\n{name}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return _print(text) if is_lead() else 0


def _print(text: str) -> int:
    """Print the report; a reader that closed the pipe (``| head``) ends it quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit is quiet too
        return 141
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
