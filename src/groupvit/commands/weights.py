"""``groupvit weights [--download NAME]``: the weights known by name, where each is cached, whether it is present.

``--weights NAME`` of every command accepts these names; the official ones are downloaded on first use
into the cache (``$GROUPVIT_CACHE``, else ``~/.cache/groupvit``) and verified. Offline, place the file
by hand at the path listed here.
"""

from __future__ import annotations

import argparse

HELP = "list the weights known by name (official releases, bundled model), their cache paths, and fetch them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--download", nargs="+", metavar="NAME", default=[],
                        help="fetch these weights into the cache now (e.g. gcc-yfcc)")


def run(args: argparse.Namespace) -> int:
    from groupvit.pretrained import WEIGHTS, cache_dir, local_path, resolve

    for name in args.download:
        print(f"{name}: {resolve(name)}")
    print(f"cache: {cache_dir()}")
    width = max(len(name) for name in WEIGHTS)
    for name, entry in WEIGHTS.items():
        path = local_path(name)
        state = "present" if path.is_file() else "not downloaded"
        print(f"{name:<{width}}  {state:<14}  {path}")
        print(f"{'':<{width}}  {entry.description}" + (f"; from {entry.url}" if entry.url else ""))
    return 0
