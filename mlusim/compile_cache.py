"""A cache of compiled programs keyed by content, so repeated runs and sweeps compile once.

An entry is one or more .mlu files (mlusim/mlufile.py: never a pickle) named by the SHA-256 of
everything the compile depends on: what was compiled (a zoo model's name, batch, resolution and
weight seed, or an ONNX file's bytes), the target config, the compile options (the mode among them:
a timing-only compile from shapes alone, BuildOptions.shape_only, is an entry of its own, so a run
with numerics never meets its placeholder weights), and mlusim's version with a digest of its own
source code, so that a changed compiler never meets an old program.

Where: $MLUSIM_CACHE_DIR, else $XDG_CACHE_HOME/mlusim, else ~/.cache/mlusim. Size: at most
$MLUSIM_CACHE_MAX_MB megabytes (default 2048); after each store the least recently used entries
(by modification time, which a hit refreshes) are deleted until the rest fits.

Processes share it safely: an entry is written to a temporary file in the same folder and renamed
into place (os.replace is atomic), so a reader sees a whole file or none. A file that does not load
(corrupt, truncated by a full disk, from a foreign tool) is deleted and the program compiled again;
a cache folder that cannot be written only means nothing is kept. The cache never changes a
result: a program read back is the program that was written (the golden tests check it).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from mlusim import __version__
from mlusim.errors import MlusimError
from mlusim.program import Program

DEFAULT_MAX_MB = 2048
STALE_SECONDS = 3600        # a temporary file this old belongs to a writer that died
EXTRA_KEY = "compile_cache_extra"     # program meta key carrying an entry's extra facts (first file only)
SUFFIX = ".mlu"


@lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of mlusim's own Python source (the package and its compiler): any edit to the code
    that makes programs gives new keys, even where the version number stays the same."""
    h = hashlib.sha256()
    for pkg in ("mlusim", "mlusim.compiler"):
        spec = importlib.util.find_spec(pkg)
        for root in sorted(spec.submodule_search_locations or []):
            for p in sorted(Path(root).rglob("*.py")):
                h.update(f"{pkg}/{p.relative_to(root).as_posix()}\n".encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (an ONNX model: graph and weights together)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_directory() -> Path:
    env = os.environ.get("MLUSIM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlusim"


def default_max_bytes() -> int:
    """$MLUSIM_CACHE_MAX_MB in bytes; unset or not a number >= 0: the default."""
    try:
        mb = float(os.environ.get("MLUSIM_CACHE_MAX_MB", DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    if not math.isfinite(mb) or mb < 0:
        mb = DEFAULT_MAX_MB
    return int(mb * 2**20)


@dataclass(frozen=True)
class CompileCache:
    directory: Path
    max_bytes: int

    @classmethod
    def from_env(cls) -> "CompileCache":
        return cls(default_directory(), default_max_bytes())

    # ---- keys ----------------------------------------------------------------------------------
    def key(self, parts: dict) -> str:
        """The entry name for a compile described by `parts` (JSON values: names, numbers, the
        config as a dict, option flags)."""
        doc = {"parts": parts, "mlusim": __version__, "source": source_digest()}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_unjsonable)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def _path(self, key: str, i: int) -> Path:
        return self.directory / f"{key}-{i}{SUFFIX}"

    # ---- reading and writing -------------------------------------------------------------------
    def load(self, key: str) -> tuple[list[Program], dict] | None:
        """The entry's programs and extra facts, or None (a miss; a bad entry is deleted)."""
        from mlusim import mlufile

        first = self._path(key, 0)
        if not first.is_file():
            return None
        progs: list[Program] = []
        try:
            prog = mlufile.load(first, mapped=True)
            extra = prog.meta.pop(EXTRA_KEY, None)
            if not isinstance(extra, dict) or not isinstance(extra.get("files"), int) or extra["files"] < 1:
                raise ValueError("entry without its facts")
            progs.append(prog)
            for i in range(1, extra["files"]):
                progs.append(mlufile.load(self._path(key, i), mapped=True))
        except (MlusimError, OSError, ValueError):
            self._discard(key)
            return None
        for i in range(len(progs)):
            _touch(self._path(key, i))
        return progs, {k: v for k, v in extra.items() if k != "files"}

    def store(self, key: str, programs: list[Program], extra: dict) -> None:
        """Write an entry (files after the first, then the first: a reader starts from the first,
        so it never finds a half-written entry); then evict down to the size cap."""
        from mlusim import mlufile

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for i in reversed(range(len(programs))):
                prog = programs[i]
                if i == 0:
                    prog.meta[EXTRA_KEY] = dict(extra, files=len(programs))
                try:
                    fd, tmp = tempfile.mkstemp(prefix=f".{key}-{i}.", suffix=".tmp", dir=self.directory)
                    os.close(fd)
                    try:
                        mlufile.save(prog, tmp, compress=False)
                        os.replace(tmp, self._path(key, i))
                    finally:
                        if os.path.exists(tmp):
                            os.unlink(tmp)
                finally:
                    if i == 0:
                        prog.meta.pop(EXTRA_KEY, None)
        except (MlusimError, OSError):
            return           # a cache that cannot be written keeps nothing; the run goes on
        self.evict()

    def evict(self) -> None:
        """Delete least recently used files until the cache fits its cap, and temporary files a
        crashed writer left (older than STALE_SECONDS: a live writer's are fresh)."""
        entries = []
        now = time.time()
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    if e.name.endswith(SUFFIX) and e.is_file():
                        st = e.stat()
                        entries.append((st.st_mtime, e.name, st.st_size))
                    elif e.name.startswith(".") and e.name.endswith(".tmp") and e.stat().st_mtime < now - STALE_SECONDS:
                        _unlink(Path(e.path))
        except OSError:
            return
        total = sum(size for _t, _n, size in entries)
        for _mtime, name, size in sorted(entries):
            if total <= self.max_bytes:
                break
            _unlink(self.directory / name)
            total -= size

    def _discard(self, key: str) -> None:
        for p in self.directory.glob(f"{key}-*{SUFFIX}"):
            _unlink(p)

    # ---- the one call sites use ------------------------------------------------------------------
    def get(self, parts: dict, build: Callable[[], tuple[list[Program], dict]]) -> tuple[list[Program], dict]:
        """The programs and extra facts for `parts`: from the cache, else built and stored."""
        key = self.key(parts)
        hit = self.load(key)
        if hit is not None:
            return hit
        programs, extra = build()
        self.store(key, programs, extra)
        if all(p.meta.get("shape_only") for p in programs):
            return programs, extra       # runs only timing only, which copies no constant: nothing to map
        stored = self.load(key)
        # the stored file, mapped, rather than the built arrays: a run then copies constants into
        # its DRAM image page by page, giving the file's pages back (mlusim.mapped), as a hit does,
        # instead of holding them twice (VGG-16 b16 with numerics: 580 -> ~430 MB peak)
        return (programs, extra) if stored is None else stored


def cache_for(enabled: bool = True) -> CompileCache | None:
    """The user's cache, or None with --no-cache."""
    return CompileCache.from_env() if enabled else None


def cached(cache: CompileCache | None, parts: dict,
           build: Callable[[], tuple[list[Program], dict]]) -> tuple[list[Program], dict]:
    """`cache.get(parts, build)`, or just `build()` without a cache."""
    return build() if cache is None else cache.get(parts, build)


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:       # gone already (another process evicted it) or not ours to delete
        pass


def _touch(p: Path) -> None:
    try:
        os.utime(p)
    except OSError:
        pass


def _unjsonable(obj):
    raise TypeError(f"compile cache key: {type(obj).__name__} is not a JSON value")
