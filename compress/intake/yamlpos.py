"""Load YAML while remembering the line of every value, for error messages.

A recipe is a small, hand-written file, so the loader refuses what no recipe needs and what
could exhaust memory or the stack: a document over :data:`MAX_BYTES`, more than
:data:`MAX_NODES` values once aliases are expanded (an "alias bomb" of nested anchors is a
few hundred bytes that expand to billions of values), nesting deeper than :data:`MAX_DEPTH`,
and an alias that refers to itself. Sizes are counted without expanding anything: each node
is measured once and an alias reuses the measure of its anchor.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent

Loc = tuple[str | int, ...]

MAX_BYTES = 1_000_000
"""Largest recipe text accepted (a recipe is a few kilobytes; a long label list is well under this)."""
MAX_NODES = 200_000
"""Most values (scalars, lists, mappings) a recipe may hold once its aliases are expanded."""
MAX_DEPTH = 100
"""Deepest nesting of lists and mappings, aliases expanded."""


class YamlLimitError(yaml.MarkedYAMLError):
    """The YAML is well-formed but exceeds a limit of :mod:`compress.intake.yamlpos` (size, nodes, depth, a cycle)."""


class RecipeLoader(yaml.SafeLoader):
    """A SafeLoader that refuses nesting deeper than :data:`MAX_DEPTH` while composing.

    PyYAML composes nested collections by recursion; refusing at :data:`MAX_DEPTH` turns a
    ``[[[[...]]]]`` document into a clear message instead of a ``RecursionError``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        if self.check_event(AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(None, None, f"nested more than {MAX_DEPTH} levels deep "
                                                 "(a recipe needs a few)", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: yaml.Node, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> tuple[int, int]:
    """Count the values and the depth of a composed document as if its aliases were expanded.

    Iterative and memoised by node identity (an alias is the very node of its anchor), so
    the cost is linear in the text, whatever the expansion.

    Returns:
        (values, depth) of the expanded document.

    Raises:
        YamlLimitError: over ``max_nodes`` values or ``max_depth`` levels, or an alias inside
            the node it refers to.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            on_path.discard(key)
            if size[key] > max_nodes:
                raise YamlLimitError(None, None, f"more than {max_nodes:,} values (aliases expanded: nested "
                                                 "anchors?); a recipe is never this large",
                                     node.start_mark)
            if depth[key] > max_depth:
                raise YamlLimitError(None, None, f"nested more than {max_depth} levels deep once its aliases "
                                                 "are expanded", node.start_mark)
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlLimitError(None, None, "an alias refers to the mapping or list that contains it "
                                             "(a recursive structure)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in on_path:
                raise YamlLimitError(None, None, "an alias refers to the mapping or list that contains it "
                                                 "(a recursive structure)", kid.start_mark)
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)], depth[id(root)]


def _walk(root: yaml.Node, lines: dict[Loc, int]) -> None:
    """Record the line of every location; an aliased node is entered once (its other uses keep their own line)."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        lines.setdefault(loc, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            pairs = []
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise yaml.constructor.ConstructorError(
                        None, None, "a key must be a plain name, not a list or mapping", key_node.start_mark)
                key = key_node.value
                if key != "<<":
                    # YAML keeps the last of two equal keys: the first would be silently ignored
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {_short(key)!r} (first at line {first[key]})",
                            key_node.start_mark)
                    first[key] = key_node.start_mark.line + 1
                lines[loc + (key,)] = key_node.start_mark.line + 1
                pairs.append((value_node, loc + (key,)))
            stack.extend(reversed(pairs))  # in document order: an anchor is entered where it is defined
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(item, loc + (i,)) for i, item in enumerate(node.value)]))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} chars)"


def load_with_lines(text: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML text; return the data and a map from location to line.

    Raises:
        YamlLimitError: the text is too large, too deep or expands to too many values.
        yaml.YAMLError: when the text is not valid YAML.
    """
    if len(text) > MAX_BYTES:
        raise YamlLimitError(None, None, f"{len(text):,} characters; a recipe is at most {MAX_BYTES:,}", None)
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Loc, int] = {}
        if node is None:
            return None, lines
        check_expansion(node)
        _walk(node, lines)
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, lines


def load_value(text: str) -> Any:
    """Parse one YAML value (a ``--set`` value) under the same limits as a recipe."""
    return load_with_lines(text)[0]


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def dotted(loc: Loc) -> str:
    """Render a location as ``steps[1].prune.ratio``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out

