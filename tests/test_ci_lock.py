"""CI installs through uv held to `.ci/constraints.txt`: that lock must agree with every pin users install."""
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.trainer_runs import REPO

LOCK = REPO / ".ci" / "constraints.txt"


def requirement_lines(path: Path):
    """(file, line number, text) of each requirement in `path`, following its `-r` includes."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text.startswith("-r "):
            yield from requirement_lines(path.parent / text[3:].strip())
        elif text:
            yield path.name, number, text


def pins(lines):
    """canonical name -> exact version of each `name==version` line."""
    pinned = {}
    for _, _, text in lines:
        requirement = Requirement(text)
        (specifier,) = requirement.specifier
        pinned[canonicalize_name(requirement.name)] = specifier.version
    return pinned


def test_the_lock_pins_every_package_exactly_and_leaves_torch_to_pip():
    for name, number, text in requirement_lines(LOCK):
        specifiers = list(Requirement(text).specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name}:{number}: not name==version: {text}"
    assert "torch" not in pins(requirement_lines(LOCK))  # uv would fetch a CUDA build; .ci/run has pip take it


def test_every_pin_of_the_requirement_files_is_the_locked_version():
    locked = pins(requirement_lines(LOCK))
    files = ["requirements.txt", "requirements-loggers.txt", "requirements-bench.txt", "requirements-preference.txt"]
    checked = 0
    for name, number, text in (line for file in files for line in requirement_lines(REPO / file)):
        requirement = Requirement(text)
        package = canonicalize_name(requirement.name)
        if package == "torch":
            continue
        assert package in locked, f"{name}:{number}: {requirement.name} is not in .ci/constraints.txt"
        assert requirement.specifier.contains(locked[package]), (
            f"{name}:{number}: {text}, but .ci/constraints.txt locks {locked[package]}: refresh the lock")
        checked += 1
    assert checked >= 20  # requirements.txt, the trackers, lm-eval and datasets
