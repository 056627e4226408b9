"""Console, progress bars and error formatting shared by the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator:
    """A rich progress bar; yields ``advance(n=1, **fields)``; fields show after the bar (loss, reward...).

    The bar appears on the first ``advance``, so a command that fails before any
    work prints its one-line error and no empty bar.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
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
