"""The project's runtime dependencies from pyproject.toml, for the Dockerfiles.

The images install the dependencies in a layer of their own (rebuilt only when
pyproject.toml changes) before the source is copied, then the project with --no-deps.
Markers stay on the printed lines and pip evaluates them, so the CPU image gets
tensorflow-cpu on x86_64 exactly as `pip install .` would.

    python docker/requirements.py                                     # every dependency
    python docker/requirements.py --without tensorflow tensorflow-cpu # all but these
    python docker/requirements.py --installed tensorflow --absent tensorflow-cpu
        # exit 1 unless that is what the running Python has installed (a build-time check)

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalised project name: ``Tensorflow_CPU`` -> ``tensorflow-cpu``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def print_requirements(pyproject: Path, without: list[str]) -> int:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    skipped = {normalize(n) for n in without}
    for requirement in dependencies:
        match = NAME.match(requirement)
        if match is None:
            print(f"cannot read a project name in {requirement!r}", file=sys.stderr)
            return 1
        if normalize(match.group(1)) not in skipped:
            print(requirement)
    return 0


def check_installed(installed: list[str], absent: list[str]) -> int:
    have = {normalize(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    wrong = [f"{n} is not installed" for n in installed if normalize(n) not in have]
    wrong += [f"{n} is installed" for n in absent if normalize(n) in have]
    for line in wrong:
        print(f"requirements.py: {line}", file=sys.stderr)
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default="pyproject.toml", type=Path)
    parser.add_argument("--without", nargs="*", default=[], help="project names to leave out")
    parser.add_argument("--installed", nargs="*", default=[], help="check: must be installed")
    parser.add_argument("--absent", nargs="*", default=[], help="check: must not be installed")
    args = parser.parse_args()
    if args.installed or args.absent:
        return check_installed(args.installed, args.absent)
    return print_requirements(args.pyproject, args.without)


if __name__ == "__main__":
    sys.exit(main())
