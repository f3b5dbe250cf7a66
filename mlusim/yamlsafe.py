"""YAML reading that cannot be turned against the user.

`yaml.safe_load` already refuses to build Python objects; on top of it we refuse aliases (the
billion-laughs family of bombs expands through them), cap nesting depth and size, and turn every
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

_LOADER = None


def _loader_class():
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                ev = self.peek_event()
                raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed in mlusim files",
                                           problem_mark=ev.start_mark)
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.MarkedYAMLError(problem=f"nesting deeper than {MAX_DEPTH}",
                                               problem_mark=self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_object(self, node, deep=False):  # type: ignore[override]
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError, TypeError, ArithmeticError) as e:
                raise yaml.MarkedYAMLError(problem=f"bad {node.tag.rsplit(':', 1)[-1]} value "
                                                   f"{str(node.value)[:40]!r} ({str(e)[:80]})",
                                           problem_mark=node.start_mark) from None

    _LOADER = StrictSafeLoader
    return StrictSafeLoader


def load_yaml_text(text: str, origin: str, error: type[MlusimError] = ConfigError):
    """Parse `text` (from `origin`, used in messages) with the strict loader; `error` on any problem."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise error(f"{origin}: {len(text):,} characters of YAML; the limit is {MAX_YAML_BYTES:,}")
    try:
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
