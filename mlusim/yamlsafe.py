"""YAML reading that cannot be turned against the user.

`yaml.safe_load` already refuses to build Python objects; on top of it we refuse aliases (the
billion-laughs family of bombs expands through them), cap nesting depth and file size, and turn
every parser complaint into a one-line MlusimError naming the file, line and column.
"""
from __future__ import annotations

from pathlib import Path

from mlusim.errors import ConfigError, MlusimError

MAX_YAML_BYTES = 1 << 20
MAX_DEPTH = 32


def _loader_class():
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

    return StrictSafeLoader


def load_yaml_text(text: str, origin: str, error: type[MlusimError] = ConfigError):
    import yaml

    try:
        return yaml.load(text, Loader=_loader_class())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        raise error(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise error(f"{origin}: invalid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise error(f"{origin}: invalid YAML: nesting too deep") from None


def load_yaml_file(path: Path, what: str = "file", error: type[MlusimError] = ConfigError):
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{path}: {what} is {size} bytes; the limit is {MAX_YAML_BYTES}")
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not UTF-8 text (bad byte at offset {e.start})") from None
    return load_yaml_text(text, str(path), error)
