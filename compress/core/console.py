"""Printing to the terminal without reading user text as markup.

Messages quote what the user or a board wrote: target names (``adb:phone:``), file paths
(``runs/[red]/``), recipe values, a phone's output. rich would read ``:phone:`` as an emoji
and ``[red]`` as a style, so the consoles made here read nothing as markup, emoji or
highlighting: a plain string prints as itself. Our own styling is built with :func:`styled`,
which escapes every value it interpolates. rich is imported only when a console is made,
never at ``import compress``.
"""

from __future__ import annotations

from typing import Any


def make_console(stderr: bool = False, **kwargs: Any) -> Any:
    """A ``rich.console.Console`` that prints strings verbatim (no markup, emoji or highlighting).

    Args:
        stderr: Write to standard error instead of standard output.
        **kwargs: Further ``Console`` arguments (``file``, ``width``, ``force_terminal``...).
            ``markup=True`` is for a caller that prints its own markup strings, every user
            value in them escaped; emoji stays off unless asked for too.
    """
    from rich.console import Console

    # soft_wrap: a long path stays on one line, whole for copying, whatever the terminal's width
    return Console(stderr=stderr, **{"markup": False, "emoji": False, "highlight": False, "soft_wrap": True, **kwargs})


def styled(template: str, *values: object) -> Any:
    """A ``rich.text.Text`` from our own markup, with each value escaped into its ``{}``.

    ``styled("[red]error:[/red] {}", message)`` colours the word ``error:`` and prints
    ``message`` exactly as it is, brackets and colons included.

    Args:
        template: rich markup written by us, with ``{}`` where the values go (a literal
            brace is ``{{`` or ``}}``, as in ``str.format``).
        *values: User-supplied values: never read as markup or emoji.
    """
    from rich.markup import escape
    from rich.text import Text

    return Text.from_markup(template.format(*(escape(str(v)) for v in values)), emoji=False)


def plain(message: str, style: str = "") -> Any:
    """A ``rich.text.Text`` of ``message`` as it is, in one ``style`` (e.g. ``"bold"``)."""
    from rich.text import Text

    return Text(message, style=style)
