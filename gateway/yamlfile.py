"""Reading the YAML files people write (the site file, meter models) with bounds.

PyYAML's safe loader still lets a small file cost a lot: an alias bomb (`&a [*b, *b, ...]`
nested nine deep) is a billion nodes once anything walks it, 20,000 nested `[` exhaust the
recursion limit, and `!!float x` or a 5,000-digit integer escape as plain ValueErrors. This
loader refuses all of them as a `yaml.YAMLError` with the line and column, so the caller
reports one line: files over `MAX_BYTES`, nesting deeper than `MAX_DEPTH` (aliases counted
where they are used), aliases adding more than `MAX_ALIAS_NODES` nodes, an alias inside its
own anchor (a cycle), a key written twice in one mapping, and scalars that cannot be read as
their tag says.

It parses with libyaml when PyYAML has it (several times faster on a large site file) but
composes in Python: libyaml's own composer recurses in C and crashes the process on deep
nesting instead of raising.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import CollectionNode, MappingNode, Node
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser as _Parser
except ImportError:  # PyYAML built without libyaml
    _Parser = None

MAX_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 50              # the deepest real site file is 5 levels
MAX_ALIAS_NODES = 1_000_000  # what `*alias` and `<<: *alias` may add to a document, in nodes
MAX_NUMBER_CHARS = 100      # an integer written longer than this is a mistake, not a value


class YamlFileError(Exception):
    """What is wrong with a file, and where in it when known."""

    def __init__(self, what: str, where: str = ""):
        super().__init__(what)
        self.what, self.where = what, where

    def line(self, source: str) -> str:
        """One line for a person: 'site.yaml line 3, column 7: not valid YAML: ...'."""
        return f"{source}{self.where}: {self.what}"


def _measure(node: Node, memo: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(nodes, depth) of `node` with every alias expanded. Recursion stays shallow: every alias
    inside was checked against MAX_DEPTH where it was used."""
    got = memo.get(id(node))
    if got is None:
        size, depth = 1, 0
        if isinstance(node, CollectionNode):
            children = [x for kv in node.value for x in kv] if isinstance(node, MappingNode) else node.value
            for child in children:
                s, d = _measure(child, memo)
                size, depth = size + s, max(depth, d)
        got = memo[id(node)] = (size, depth + 1)
    return got


class _Composer(Composer):
    """PyYAML's composer with the bounds: depth, alias expansion and cycles."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._open: set[str] = set()    # anchors of the collections being composed
        self._alias_nodes = 0
        self._sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, ScalarEvent):  # most nodes: nothing deeper, nothing to count
            return super().compose_node(parent, index)
        if isinstance(event, AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def _count_alias(self, event: AliasEvent) -> None:
        if event.anchor in self._open:
            raise ComposerError(None, None, f"alias *{event.anchor} is inside its own anchor &{event.anchor} "
                                "(an endless value)", event.start_mark)
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # the composer reports the undefined alias
        size, depth = _measure(target, self._sizes)
        if self._depth + depth > MAX_DEPTH:
            raise ComposerError(None, None, f"alias *{event.anchor} here makes the value nested more than "
                                f"{MAX_DEPTH} levels deep", event.start_mark)
        self._alias_nodes += size - 1
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise ComposerError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes "
                                f"(at *{event.anchor}); write the values out", event.start_mark)


class _Constructor(SafeConstructor):
    """Safe constructor: a key twice in one mapping is an error (YAML would keep the last), and a
    scalar that is not what its tag says (`!!float x`, a date 2025-02-30) is a ConstructorError."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            what = node.tag.rsplit(":", 1)[-1]
            text = node.value if isinstance(node.value, str) else ""
            shown = text if len(text) <= 40 else f"{text[:37]}..."
            why = f" ({e})" if what == "timestamp" and isinstance(e, ValueError) else ""  # day out of range
            raise ConstructorError(None, None, f"'{shown}' is not a valid {what}{why}", node.start_mark) from None

    def construct_yaml_int(self, node):
        if isinstance(node.value, str) and len(node.value) > MAX_NUMBER_CHARS:
            raise ConstructorError(None, None, f"a number of {len(node.value)} characters is too long",
                                   node.start_mark)
        return super().construct_yaml_int(node)

    def construct_unique_mapping(self, node: MappingNode, deep: bool = False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:
                raise ConstructorError(None, None, "a list or mapping cannot be a key",
                                       key_node.start_mark) from None
            if first is not None:
                raise ConstructorError(None, None, f"key '{key}' appears twice (first on line {first + 1})",
                                       key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return self.construct_mapping(node, deep)


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)
_Constructor.add_constructor(BaseResolver.DEFAULT_MAPPING_TAG, _Constructor.construct_unique_mapping)

class _PyLoader(Reader, Scanner, Parser, _Composer, _Constructor, Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)


_Loader: type = _PyLoader
if _Parser is not None:
    class _CLoader(_Parser, _Composer, _Constructor, Resolver):
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _Composer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)

        # libyaml's parser, this module's composer (the C one would take these first)
        get_single_node = _Composer.get_single_node
        compose_node = _Composer.compose_node

    _Loader = _CLoader


@contextmanager
def _no_gc() -> Iterator[None]:
    """A large file makes millions of objects and no cycles: without this, the collector's
    passes over the growing heap make loading grow faster than the file."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load_with(loader_class: type, text: str) -> Any:
    loader = loader_class(text)
    try:
        with _no_gc():
            return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """The one document in `text`; a yaml.YAMLError (marked where known) for anything refused."""
    try:
        return _load_with(_Loader, text)
    except yaml.YAMLError as e:
        # Newer libyaml builds look far ahead inside deep flow collections and stop at their own
        # limit before this module's composer sees the 51st level: the Python parser streams, so
        # it says where the file went too deep.
        if _Loader is _PyLoader or "maximum nesting depth" not in str(getattr(e, "problem", "")):
            raise
    return _load_with(_PyLoader, text)


def read_yaml_file(path: Path) -> Any:
    """Read and load a YAML file people write; YamlFileError when it is missing, too large, not
    UTF-8 or not acceptable YAML."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # not stat(): a pipe or a device says 0 bytes
    except FileNotFoundError:
        raise YamlFileError("no such file") from None
    except OSError as e:
        raise YamlFileError(f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise YamlFileError(f"larger than {MAX_BYTES // (1024 * 1024)} MB: not read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlFileError(f"not UTF-8 (byte {e.start})") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = str(getattr(e, "problem", None) or e).replace("\n", " ")
        raise YamlFileError(f"not valid YAML: {what}",
                            f" line {mark.line + 1}, column {mark.column + 1}" if mark else "") from None
