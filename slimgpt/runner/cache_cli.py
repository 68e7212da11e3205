"""``slimgpt-cache``: list, verify and clean the run cache (pruned / fine-tuned checkpoints, eval results).

    slimgpt-cache list                  # kind/key, size, files, created, state (marker and sizes, no hashing)
    slimgpt-cache verify [KEY ...]      # re-hash entries against their markers (exit 1 on a problem)
    slimgpt-cache gc [--min-age S] [--resume-max-age S] [--dry-run]
                                        # remove leftovers of killed writers (.tmp-*/.old-*), orphans and
                                        # stale prune checkpoints (.resume-*: finished, or older than 7 days)
    slimgpt-cache rm KEY [KEY ...]      # remove entries; KEY is <key> or <kind>/<key>

``--cache DIR`` overrides ``$SLIMGPT_RUN_CACHE`` / ``<asset cache>/runs`` (the runner's ``paths.cache``).
A damaged entry is also removed and rebuilt by the next job that needs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cache import RESUME_MAX_AGE, RESUME_PREFIX, ArtifactCache, default_root


class CacheKeyError(ValueError):
    """A key given on the command line names no entry, or several."""


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _select(cache: ArtifactCache, keys: list[str]) -> list[tuple[str, str, Path]]:
    """The entries named by ``keys`` (``<key>`` or ``<kind>/<key>``), all entries when ``keys`` is empty."""
    entries = list(cache.entries())
    if not keys:
        return entries
    chosen = []
    for wanted in keys:
        found = [e for e in entries if wanted in (e[1], f"{e[0]}/{e[1]}")]
        if len(found) != 1:
            what = "no entry" if not found else f"{len(found)} entries ({', '.join(f'{k}/{n}' for k, n, _ in found)})"
            raise CacheKeyError(f"'{wanted}' names {what} in {cache.root}; `slimgpt-cache list` shows the entries, "
                                f"KEY is <key> or <kind>/<key>")
        chosen += found
    return chosen


def cmd_list(cache: ArtifactCache, args) -> int:
    print(f"run cache: {cache.root}")
    for kind, key, folder in cache.entries():
        marker, problem = cache.marker(folder)
        state = problem or cache.problem(folder, check="sizes") or "ok"
        created = marker["created"] if marker else "?"
        files = len(marker["files"]) if marker else 0
        print(f"{kind}/{key}  {_size(folder) / 1e6:9.1f} MB  {files:3d} files  {created}  {state}")
    return 0


def cmd_verify(cache: ArtifactCache, args) -> int:
    failures = 0
    for kind, key, folder in _select(cache, args.keys):
        problem = cache.problem(folder, check="full")
        print(f"{kind}/{key}: {'ok' if problem is None else problem}")
        failures += problem is not None
    return 1 if failures else 0


def cmd_gc(cache: ArtifactCache, args) -> int:
    removable, kept = cache.garbage(min_age=args.min_age, resume_max_age=args.resume_max_age)
    for path in removable:
        if not args.dry_run:
            cache.remove(path)
        print(f"{'would remove' if args.dry_run else 'removed'} {path.relative_to(cache.root)}")
    for path in kept:
        why = ("the checkpoint of an unfinished prune: running it again resumes from it; --resume-max-age 0 "
               "removes it unless a prune holds it" if path.name.startswith(RESUME_PREFIX) else
               "a job may still be writing it; --min-age 0 removes it unless it is locked")
        print(f"kept {path.relative_to(cache.root)} ({why})")
    print(f"{len(removable)} {'to remove' if args.dry_run else 'removed'}, {len(kept)} kept")
    return 0


def cmd_rm(cache: ArtifactCache, args) -> int:
    for kind, key, folder in _select(cache, args.keys):
        cache.remove(folder)
        print(f"removed {kind}/{key}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``slimgpt-cache``."""
    parser = argparse.ArgumentParser(prog="slimgpt-cache", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="run cache directory (default $SLIMGPT_RUN_CACHE or <asset cache>/runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the entries").set_defaults(func=cmd_list)
    verify = sub.add_parser("verify", help="re-hash entries against their markers")
    verify.add_argument("keys", nargs="*", metavar="KEY", help="<key> or <kind>/<key> (default: all)")
    verify.set_defaults(func=cmd_verify)
    gc = sub.add_parser("gc", help="remove leftovers of killed writers and orphans")
    gc.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                    help="keep leftovers written in the last SECONDS (default 3600)")
    gc.add_argument("--resume-max-age", type=float, default=RESUME_MAX_AGE, metavar="SECONDS",
                    help="keep checkpoints of unfinished prunes written in the last SECONDS (default 7 days)")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.set_defaults(func=cmd_gc)
    rm = sub.add_parser("rm", help="remove entries")
    rm.add_argument("keys", nargs="+", metavar="KEY", help="<key> or <kind>/<key>")
    rm.set_defaults(func=cmd_rm)
    args = parser.parse_args(argv)
    cache = ArtifactCache(args.cache if args.cache is not None else default_root())
    try:
        return args.func(cache, args)
    except CacheKeyError as err:
        print(f"slimgpt-cache: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
