"""`scenewright <command> ...`: one entry point; each command lives in its own module.

Commands are imported only when run, so `scenewright --help` is instant and
a command's heavy imports (torch, fastapi, ...) never slow down the others.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module with `main(argv: list[str]) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("scenewright.service.server", "run the local generation service (HTTP)"),
    "generate": ("scenewright.generate", "image + instance masks -> meshes (GLB + JSON), no service"),
    "predict": ("scenewright.evaluation.predict", "run a model over benchmark cases, write PRED/<case>/<k>.ply"),
    "eval": ("scenewright.evaluation.evaluate", "score predictions with the benchmark protocol"),
    "bench": ("scenewright.bench.run", "speed and memory benchmarks"),
    "make-data": ("scenewright.data.generate", "render procedural blockout scenes (needs bpy)"),
    "train": ("scenewright.training.train", "train the default model"),
}


def _usage() -> str:
    lines = ["usage: scenewright <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `scenewright <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"scenewright: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
