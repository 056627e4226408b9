"""``flowopd``: the command line. Heavy imports (torch, diffusers) happen inside the commands, so help is instant.

The commands live in one module per group (``train``, ``evaluate``: sample, eval, report and publish; ``rewards``,
``weights``, ``prompts``, ``mini``); importing them registers them on :data:`flowopd.cli.app.app`.
"""

from __future__ import annotations

import os
import sys

import typer

from flowopd.cli import evaluate, mini, prompts, rewards, train, weights  # noqa: F401  (registers the commands)
from flowopd.cli.app import _ARGV, app
from flowopd.cli.train import _load_train_config  # noqa: F401  (tests load recipes through the CLI's path)
from flowopd.cli.ui import err_console, error, one_line, warn_once

# ------------------------------------------------------------------ entry point


def _show_plugin_warning(default, category):
    """Plugin and run warnings as one ``warning:`` line; every other warning as Python shows it."""

    def show(message, cat, *args, **kwargs):
        if issubclass(cat, category):
            warn_once(str(message))
        else:
            default(message, cat, *args, **kwargs)

    return show


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors print as one line (traceback with --debug) and exit non-zero."""
    args = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = args
    import warnings

    from flowopd.errors import PluginWarning, RunWarning

    warnings.showwarning = _show_plugin_warning(warnings.showwarning, (PluginWarning, RunWarning))
    if "--debug" in args[1:]:  # accepted anywhere on the line: it belongs to the root command
        args = ["--debug"] + [a for a in args if a != "--debug"]
    debug = "--debug" in args or os.environ.get("FLOWOPD_DEBUG") == "1"
    try:
        rv = app(args=args, prog_name="flowopd", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return 130
    except typer.TyperException as exc:  # option-parser errors (Typer's vendored click): bad option, bad value
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has already printed the help
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "flowopd"
            error(f"{exc.format_message()} (see `{where} --help`)")
        return getattr(exc, "exit_code", 2)
    except Exception as exc:
        if debug:
            raise
        error(one_line(exc))
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
