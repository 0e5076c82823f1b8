"""User text printed through compress.core.console comes out as it was written."""

from __future__ import annotations

import io

from compress.core.console import make_console, plain, styled

TRICKY = ["adb:phone:", "runs/[red]x[/red]/model.onnx", "[bold]", "a:smile: b", "[link=http://x]y[/link]", "back\\[red]"]


def _printed(*objects: object, **kwargs: object) -> str:
    out = io.StringIO()
    c = make_console(file=out, **{"width": 200, **kwargs})
    for o in objects:
        c.print(o)
    return out.getvalue()


def test_strings_print_verbatim() -> None:
    for text in TRICKY:
        assert _printed(text) == text + "\n"


def test_styled_escapes_values_and_keeps_our_style() -> None:
    for text in TRICKY:
        t = styled("[red]error:[/red] {} ({})", text, text)
        assert t.plain == f"error: {text} ({text})"
        assert [(s.start, s.end, str(s.style)) for s in t.spans] == [(0, 6, "red")]
        assert _printed(t) == f"error: {text} ({text})\n"
        # on a terminal, the colour is there and the text is still the user's
        coloured = _printed(t, force_terminal=True, color_system="standard")
        assert "\x1b[31merror:\x1b[0m" in coloured and text in coloured


def test_a_markup_console_still_never_makes_emoji() -> None:
    """The runner's console reads our own markup; user text reaches it escaped, and emoji stay off."""
    assert _printed("target adb:phone: [bold]ok[/bold]", markup=True) == "target adb:phone: ok\n"
    assert _printed(plain("adb:phone: [red]", "bold"), markup=True) == "adb:phone: [red]\n"


def test_long_paths_are_not_wrapped() -> None:
    path = "/very/long/" + "x" * 150 + "/model.onnx"
    assert _printed(f"report: {path}", width=40) == f"report: {path}\n"
