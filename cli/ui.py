"""Console, progress bars and error formatting shared by the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.text import Text

# No markup and no emoji codes in what we print: user text (paths like my[test].txt, extras like [paddle],
# ":x:" in an error) is printed as it is. Our own styles are rich Text objects (see `styled`).
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain strings and ``(text, style)`` pairs, none of it read as markup."""
    return Text.assemble(*parts)


def warn(message: str) -> None:
    """``warning: message`` on stderr, the message printed as it is."""
    err_console.print(styled(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


_SAID: set[str] = set()


def warn_once(message: str) -> None:
    """:func:`warn`, unless this process has said ``message`` already (a plugin warning both raised and listed)."""
    if message not in _SAID:
        _SAID.add(message)
        warn(message)


def error(message: str) -> None:
    """``error: message`` on stderr, the message printed as it is."""
    err_console.print(styled(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator:
    """A rich progress bar; yields ``advance(n=1, **fields)``; fields show after the bar (loss, reward...).

    The bar appears on the first ``advance``, so a command that fails before any
    work prints its one-line error and no empty bar.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=err_console,
        transient=False,
    )
    task = progress.add_task(description, total=total, info="")

    def advance(
        n: int = 1, description: str | None = None, completed: int | None = None, total: int | None = None, **fields: float
    ) -> None:
        if not progress.live.is_started:
            progress.start()
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        kwargs: dict = {"info": info} if fields else {}
        if description:
            kwargs["description"] = description
        if total is not None:
            kwargs["total"] = total
        if completed is not None:
            progress.update(task, completed=completed, **kwargs)
        else:
            progress.update(task, advance=n, **kwargs)

    try:
        yield advance
    finally:
        if progress.live.is_started:
            progress.stop()


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (type name added for unexpected errors)."""
    from flowopd.errors import FlowOPDError

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, FlowOPDError):
        return msg
    return f"{type(exc).__name__}: {msg} (run `flowopd --debug ...` for the traceback)"
