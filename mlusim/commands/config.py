"""`mlusim config list|show`: the bundled presets and resolved configs with units."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("config", help="list presets or show a resolved config")
    cs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    cs.add_parser("list", help="list the bundled presets")
    s = cs.add_parser("show", help="print a resolved config with units")
    s.add_argument("name", nargs="?", default=None, metavar="NAME|FILE")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)


def cmd_config(args) -> int:
    from mlusim.config import list_presets, load_config

    if args.action == "list":
        for name in list_presets():
            cfg = load_config(name)
            print(f"{name:8} {cfg.description}")
        return 0
    cfg = load_config(args.name, args.overrides)
    print(format_config(cfg))
    return 0


def format_config(cfg) -> str:
    """The resolved config as YAML, each leaf annotated with its unit and meaning."""
    from mlusim.config import iter_leaves

    lines = [f"# resolved from {cfg.source}"]
    data = cfg.to_dict()
    section = None
    for path, _tp, meta in iter_leaves():
        parts = path.split(".")
        node = data
        for p in parts:
            node = node[p]
        if len(parts) == 1:
            lines.append(f"{path}: {json.dumps(node)}")
            continue
        if parts[0] != section:
            section = parts[0]
            lines.append(f"{section}:")
        if len(parts) == 3 and path.rsplit(".", 1)[0] not in lines[-1] and not lines[-1].startswith("    "):
            lines.append(f"  {parts[1]}:")
        indent = "  " * (len(parts) - 1)
        unit = f" [{meta['unit']}]" if meta.get("unit") else ""
        lines.append(f"{indent}{parts[-1] + ':':<{34 - len(indent)}} {node!s:<8} # {meta.get('doc', '')}{unit}")
    return "\n".join(lines)
