"""Reading YAML/JSON config files safely: bounded, strict, with the line of every value.

Every config file the project reads (ablation specs, trial configs, ``--set`` values) goes
through :func:`load_file` / :func:`parse_scalar`, so one set of rules holds everywhere:

* the file is at most ``max_bytes`` (default 256 KiB; a spec is a few hundred bytes, a
  10,000-trial one a few KiB) — checked before it is read, so a 50 MB list costs nothing;
* it is UTF-8 (a UTF-8 byte-order mark is allowed; UTF-16/32 and invalid bytes are errors that
  name the line);
* YAML 1.2 (ruamel.yaml, pure-Python safe loader): ``1.0e9`` is a number and ``yes``/``on``
  are strings, unlike PyYAML's YAML 1.1; duplicate keys in a mapping are errors;
* nesting is at most ``max_depth`` levels (50,000 ``[`` would otherwise exhaust the
  recursion limit), and the document, with every alias expanded, has at most ``max_nodes``
  values (an alias "billion laughs" bomb is refused while it is being read, before anything
  is expanded in memory).

The pure-Python parser (needed for the limits and the line marks) reads about 10,000 values a
second on a busy CI core, so the limits also bound the time: the worst file (256 KiB of
one-character values) is refused at the 20,000th value, in about 2 s there; a real spec loads
in about 10 ms (PyYAML's pure-Python loader: 5 ms, without limits or lines).

Errors are :class:`pipeline.errors.ConfigError` with one line ``file:line: what``.  The
returned :class:`Lines` maps a key path (``("axes", "radius", 0)``) to its 1-based line.
"""
from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer, ComposerError, MaxDepthExceededError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scanner import Scanner, ScannerError

from .errors import ConfigError

MAX_BYTES = 256 << 10  # 256 KiB
MAX_DEPTH = 64
MAX_NODES = 20_000

_FOREIGN_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)

KeyPath = tuple[Union[str, int], ...]


class Problems:
    """The problems found so far in a file, in order, one line each: ``file:line: key: what``.

    A problem is a bad value: the same key at the same line is reported once, with the first
    reason found (``stages: [4]`` on a 3-stage backbone is one problem, not one per block).
    Ablation specs and search specs collect their problems here, and raise them all at once.
    """

    def __init__(self, where: "Lines"):
        self.where = where
        self.lines: dict[tuple[str, str], str] = {}
        self.seen: set[tuple[str, str, str]] = set()

    def add(self, path: tuple, text: str) -> None:
        import re

        loc = self.where(*path)
        key, _, reason = text.partition(": ")
        # the same reason for several values of one list on one line (axes.optim.foo[0] and [1]:
        # unknown key) is one problem too
        same = (loc, re.sub(r"\[\d+\]", "[]", key), reason)
        if same in self.seen:
            return
        self.seen.add(same)
        self.lines.setdefault((loc, key), f"{loc}: {text}")

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            from pipeline.errors import ConfigError

            raise ConfigError.many(self.lines.values())

    def validate(self, model: Any, raw: Any, prefix: tuple = ()) -> Any:
        """``model.model_validate(raw)``; when it fails, every error is added at its key's line
        (under ``prefix``) and all problems so far are raised."""
        from pydantic import ValidationError

        from pipeline.config import validation_problems

        try:
            return model.model_validate(raw)
        except ValidationError as e:
            for key, msg in validation_problems(e):
                self.add((*prefix, *key.split(".")), ".".join([*prefix, key]) + f": {msg}")
            self.raise_if_any()
            raise  # pragma: no cover - a validation error always has a problem


@dataclass
class Lines:
    """Where each value of a loaded document is: key path -> 1-based line, and the file name."""

    source: str
    by_path: dict[KeyPath, int] = field(default_factory=dict)

    def __call__(self, *path: Union[str, int]) -> str:
        """``file:line`` of ``path``, or of its nearest ancestor that has a line; ``file`` alone
        when none does."""
        keys = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in path)  # "0" from a dotted loc
        for k in range(len(keys), 0, -1):
            line = self.by_path.get(keys[:k])
            if line is not None:
                return f"{self.source}:{line}"
        return self.source


class _BoundedComposer(Composer):
    """ruamel's composer, counting every value as if aliases were expanded.

    ``max_nodes`` bounds the expanded size; the count of an alias is the expanded size of the
    node it names (memoised), so a bomb of nested aliases is refused after a few events.
    """

    max_nodes = MAX_NODES

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.count = 0
        self.root: Optional[Node] = None
        self._sizes: dict[int, int] = {}
        self._done: set[int] = set()  # collections composed to their end

    def _expanded(self, node: Node) -> int:
        size = self._sizes.get(id(node))
        if size is None:
            if isinstance(node, MappingNode):
                size = 1 + sum(self._expanded(k) + self._expanded(v) for k, v in node.value)
            elif isinstance(node, SequenceNode):
                size = 1 + sum(self._expanded(v) for v in node.value)
            else:
                size = 1
            self._sizes[id(node)] = size
        return size

    def _add(self, n: int, mark: Any) -> None:
        self.count += n
        if self.count > self.max_nodes:
            raise ComposerError(None, None, f"more than {self.max_nodes:,} values (aliases expanded); "
                                            "the limit keeps a config from filling memory", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            mark = self.parser.peek_event().start_mark
            node = super().compose_node(parent, index)
            if isinstance(node, (MappingNode, SequenceNode)) and id(node) not in self._done:
                raise ComposerError(None, None, "recursive alias (it names a value that contains it)", mark)
            self._add(self._expanded(node), mark)
            return node
        self._add(1, self.parser.peek_event().start_mark)
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor: Any) -> Any:
        node = super().compose_sequence_node(anchor)
        self._done.add(id(node))
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        self._done.add(id(node))
        return node

    def compose_document(self) -> Any:
        self.root = super().compose_document()
        return self.root


class _BoundedScanner(Scanner):
    """ruamel's scanner, refusing flow nesting (``[[[...``) deeper than ``max_depth`` as it reads
    it: each open bracket may start a simple key, which the scanner otherwise looks up to 1,024
    characters ahead for, checking every open level at each token (quadratic; 50,000 brackets
    took 1.5-6 s before the composer's own depth limit was reached)."""

    max_depth = MAX_DEPTH

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: str) -> None:
        if len(self.flow_context) >= self.max_depth:
            raise ScannerError(None, None, f"nested more than {self.max_depth} levels deep",
                               self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


def _yaml(max_depth: int, max_nodes: int) -> YAML:
    y = YAML(typ="safe", pure=True)  # pure: the composer above, and marks on every node
    y.allow_duplicate_keys = False
    y.max_depth = max_depth
    y.Composer = type("Composer", (_BoundedComposer,), {"max_nodes": max_nodes})
    y.Scanner = type("Scanner", (_BoundedScanner,), {"max_depth": max_depth})
    return y


def _lines_of(node: Optional[Node], lines: Lines) -> None:
    """Record the line of every mapping key and sequence item (iteratively; depth is bounded
    anyway).  Aliased subtrees are walked once per place they are used, within ``max_nodes``."""
    stack: list[tuple[Node, KeyPath]] = [(node, ())] if node is not None else []
    if node is not None:
        lines.by_path.setdefault((), node.start_mark.line + 1)  # the document's first line
    while stack:
        n, path = stack.pop()
        if isinstance(n, MappingNode):
            for k, v in n.value:
                key = k.value if not isinstance(k, (MappingNode, SequenceNode)) else None
                if key is None:
                    continue
                p = path + (key,)
                lines.by_path.setdefault(p, k.start_mark.line + 1)
                stack.append((v, p))
        elif isinstance(n, SequenceNode):
            for i, v in enumerate(n.value):
                p = path + (i,)
                lines.by_path.setdefault(p, v.start_mark.line + 1)
                stack.append((v, p))


def _decode(data: bytes, source: str) -> str:
    for bom, name in _FOREIGN_BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{source}:1: not UTF-8: the file starts with a {name} byte-order mark; "
                              "save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{source}:{line}: not UTF-8: byte 0x{data[e.start]:02x} cannot be decoded; "
                          "save the file as UTF-8") from None


def _yaml_error(e: YAMLError, source: str, max_depth: int) -> ConfigError:
    if isinstance(e, MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        if isinstance(e, MaxDepthExceededError):
            return ConfigError(f"{where}: not valid YAML: nested more than {max_depth} levels deep")
        what = " ".join(str(e.problem or e.context or type(e).__name__).split())
        cmark = e.context_mark
        if e.problem and e.context and cmark is not None and mark is not None and cmark.line != mark.line:
            what += f" ({' '.join(str(e.context).split())} at line {cmark.line + 1})"  # where the open bracket is
        return ConfigError(f"{where}: not valid YAML: {what}")
    return ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}")


def loads(text: str, source: str = "<text>", *, max_depth: int = MAX_DEPTH,
          max_nodes: int = MAX_NODES) -> tuple[Any, Lines]:
    """Parse one YAML 1.2 document (JSON is YAML) within the limits; returns ``(data, lines)``."""
    y = _yaml(max_depth, max_nodes)
    lines = Lines(source)
    try:
        data = y.load(text)
    except RecursionError:  # pragma: no cover - max_depth stops nesting long before this
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    except ReaderError as e:  # a character YAML does not allow (NUL, other control characters)
        line = text.count("\n", 0, max(e.position, 0)) + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise ConfigError(f"{source}:{line}: not valid YAML: character U+{code:04X} is not allowed") from None
    except YAMLError as e:
        raise _yaml_error(e, source, max_depth) from None
    _lines_of(y.composer.root if y.composer is not None else None, lines)
    return data, lines


def load_file(path: Union[str, Path], *, what: str = "config file", max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> tuple[Any, Lines]:
    """Read ``path`` (YAML or JSON) within the limits above; ``what`` names it in errors."""
    return loads(read_text(path, what=what, max_bytes=max_bytes), str(path), max_depth=max_depth,
                 max_nodes=max_nodes)


def read_text(path: Union[str, Path], *, what: str = "config file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``max_bytes``; ConfigError (one
    line) for an empty path, a folder, a FIFO or device (not a regular file), an unreadable or
    oversized file, or bytes that are not UTF-8."""
    if not str(path).strip():  # Path("") is the current folder
        raise ConfigError(f"{what}: the path is empty")
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}" if not p.exists() else f"{what} is not a file: {p}")
    try:  # a file this user may not read (mode 000), or whose reads fail (I/O error)
        size = p.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{source}: {what} is {size:,} bytes; the limit is {max_bytes:,}")
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the {what}: {e.strerror or type(e).__name__}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{source}: {what} is over {max_bytes:,} bytes")
    return _decode(data, source)


def non_finite(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, float]]:
    """Every ``inf``/``nan`` in a loaded tree (``.inf``, ``1e400``), with its key path."""
    stack = [(tree, path)]
    while stack:
        node, p = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, p + (k,)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, p + (i,)) for i, v in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            yield p, node


def parse_scalar(text: str, what: str = "value") -> Any:
    """A command-line value (``--set key=VALUE``) read as YAML 1.2: ``1e-3`` is a float, ``[1, 2]``
    a list, ``yes`` a string.  Empty text is ``None``."""
    if not text.strip():
        return None
    return loads(text, what, max_depth=16, max_nodes=10_000)[0]
