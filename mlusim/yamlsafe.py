"""YAML reading that cannot be turned against the user.

`yaml.safe_load` already refuses to build Python objects; on top of it we refuse aliases (the
billion-laughs family of bombs expands through them), cap nesting depth, node count and size
(screened on the parser's events before anything is built), and turn every
parser complaint into a one-line MlusimError naming the file, line and column. PyYAML's safe
constructors can themselves raise plain Python errors on hostile scalars (an "integer" of 5000
digits, a timestamp such as 2001-13-45): those become the same kind of error, with the position of
the offending node.
"""
from __future__ import annotations

from pathlib import Path

from mlusim.errors import ConfigError, MlusimError

MAX_YAML_BYTES = 1 << 20
MAX_DEPTH = 32

MAX_NODES = 10_000      # scalars, mappings and sequences: a config has ~60, a sweep file a few hundred

_LOADER = None


def _loader_class():
    """A safe loader that also refuses hostile scalars at their position. libyaml's parser (C)
    when PyYAML has it, since the events were already screened by `_screen`; else the pure-Python
    one, which screens again while composing."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    base = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader

    class StrictSafeLoader(base):  # type: ignore[misc, valid-type]
        def construct_object(self, node, deep=False):  # type: ignore[override]
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError, TypeError, ArithmeticError) as e:
                raise yaml.MarkedYAMLError(problem=f"bad {node.tag.rsplit(':', 1)[-1]} value "
                                                   f"{str(node.value)[:40]!r} ({str(e)[:80]})",
                                           problem_mark=node.start_mark) from None

    _LOADER = StrictSafeLoader
    return StrictSafeLoader


def _screen(text: str) -> None:
    """Walk the parser's events (C speed where available) before anything is composed: refuse an
    alias (billion laughs), nesting deeper than MAX_DEPTH and more than MAX_NODES nodes, each at
    its position, as soon as it is seen. So a hostile file costs at most MAX_NODES events, never
    a pure-Python parse of 40,000 keys."""
    import yaml

    depth = nodes = 0
    for ev in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader):
        if isinstance(ev, yaml.AliasEvent):
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed in mlusim files",
                                       problem_mark=ev.start_mark)
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise yaml.MarkedYAMLError(problem=f"nesting deeper than {MAX_DEPTH}", problem_mark=ev.start_mark)
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if isinstance(ev, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise yaml.MarkedYAMLError(problem=f"more than {MAX_NODES:,} values (keys, items); an mlusim "
                                                   f"file needs far fewer", problem_mark=ev.start_mark)


def load_yaml_text(text: str, origin: str, error: type[MlusimError] = ConfigError):
    """Parse `text` (from `origin`, used in messages) with the strict loader; `error` on any problem."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise error(f"{origin}: {len(text):,} characters of YAML; the limit is {MAX_YAML_BYTES:,}")
    try:
        _screen(text)
        return yaml.load(text, Loader=_loader_class())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        raise error(f"{where}: invalid YAML: {e.problem or e.context or 'syntax error'}") from None
    except yaml.YAMLError as e:
        raise error(f"{origin}: invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except RecursionError:
        raise error(f"{origin}: invalid YAML: nesting too deep") from None
    except (ValueError, OverflowError, TypeError, ArithmeticError) as e:   # a constructor outside a node
        raise error(f"{origin}: invalid YAML value ({str(e)[:80]})") from None


def load_yaml_file(path: Path, what: str = "file", error: type[MlusimError] = ConfigError):
    """Read and parse a YAML file of at most MAX_YAML_BYTES, which must be UTF-8."""
    try:
        if not path.is_file():
            raise error(f"{path}: no such {what} file")
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{path}: {what} is {size:,} bytes; the limit is {MAX_YAML_BYTES:,}")
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)   # the file may have grown since stat()
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if len(data) > MAX_YAML_BYTES:
        raise error(f"{path}: {what} is over the limit of {MAX_YAML_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not UTF-8 text (bad byte at offset {e.start})") from None
    return load_yaml_text(text, str(path), error)
