"""Checks for user input that is not a preset field: numbers from the environment, names that become
file names, and places we are asked to write. Each returns the checked value or raises UserError with one
line that says what is wrong and how to fix it. Standard library only: the entrypoint and `--dry-run` use it.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import unicodedata
from pathlib import Path

from launcher.core.errors import UserError

# One path segment: never `.` or `..`, no separator, no control character, nothing a shell must quote.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def finite_number(name: str, text: str, low: float, high: float, unit: str, example: str) -> float:
    """`text` as a float in (low, high]; `nan`, `inf` and words are refused with an example."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not low < number <= high:
        raise UserError(f"{name}={text!r} is not a number of {unit} above {low:g} and at most {high:.15g}: "
                        f"e.g. {example}")
    return number


def safe_name(value: str, what: str) -> str:
    """A name that becomes one file or folder name inside a folder we own (a run id, an output name)."""
    if not SAFE_NAME.fullmatch(value):
        raise UserError(f"{what} {shown(value)} is not a plain name: use up to 100 ASCII letters, digits, '_', '.' "
                        "and '-', starting with a letter or digit")
    return value


def has_control(text: str) -> bool:
    """Newlines, tabs, escapes and other control or format characters (Unicode categories Cc, Cf)."""
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def shown(text: str) -> str:
    """`text` quoted for an error line: control characters are escaped so the line stays one line."""
    return repr(text) if has_control(text) or not text.strip() else f"'{text}'"


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink followed, lies in `root` (itself followed)."""
    try:
        path.resolve(strict=False).relative_to(root.resolve(strict=False))
    except ValueError:
        return False
    return True


def existing_file(path: Path, what: str, fix: str) -> Path:
    """A file to read: "not found" and "is a folder" are different problems with different fixes."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file: {fix}")
    if not path.is_file():
        raise UserError(f"{what} {path} not found: {fix}")
    return path


def writable_dir(folder: Path, what: str) -> Path:
    """An existing folder we may write into."""
    if not folder.exists():
        raise UserError(f"{what} {folder} does not exist: create it first")
    if not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder: give a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder} is not writable: fix its permissions or choose another folder")
    return folder


def creatable_dir(folder: Path, what: str) -> Path:
    """A folder that exists and is writable, or whose nearest existing ancestor is a writable folder."""
    if os.path.lexists(folder):
        return writable_dir(folder, what)
    ancestor = folder.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what} {folder} cannot be created: {ancestor} is a file, not a folder: give a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder} cannot be created: {ancestor} is not writable: fix its permissions or "
                        "choose another folder")
    return folder


def new_file(target: Path, what: str, force: bool = False) -> Path:
    """A file path we may create: its folder is writable; an existing file or symlink needs `force`."""
    if target.is_dir():
        raise UserError(f"{what} {target} is a folder: give a file name inside it")
    if os.path.lexists(target) and not force:
        kind = "a symlink" if target.is_symlink() else "a file"
        raise UserError(f"{target} is already {kind}: choose another path, or add --force to replace it "
                        "(nothing was overwritten)")
    writable_dir(target.parent, "folder")
    return target


def new_dir(target: Path, what: str) -> Path:
    """A folder to create that must not exist yet (nothing of the user's is merged into or replaced)."""
    if os.path.lexists(target):
        raise UserError(f"{what} {target} already exists: choose a new folder (nothing was changed)")
    writable_dir(target.parent, f"the parent of {what}")
    return target


# Far deeper than any preset value (a [[dataset.videos]] entry's resolution is 5 levels down from the file's top)
# and far below Python's recursion limit, which json, tomllib, copy.deepcopy and pydantic would otherwise reach.
MAX_NESTING = 16


def bracket_depth(text: str, limit: int = MAX_NESTING) -> int:
    """How deep `[` and `{` nest in JSON text, outside its strings; counting stops past `limit`, so a value nested
    100000 deep costs one scan and no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = ch == "\\", ch != '"'
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def data_depth(data: object, limit: int = MAX_NESTING) -> int:
    """How deep lists and tables nest in parsed data (walked without recursion); counting stops past `limit`."""
    deepest, stack = 0, [(data, 0)]
    while stack and deepest <= limit:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            stack += [(child, depth + 1) for child in children]
    return deepest


def too_deep(where: str) -> UserError:
    return UserError(f"{where} nests lists or tables more than {MAX_NESTING} levels deep (no preset value nests "
                     "more than 5): check its brackets")


def toml_data(text: str, where: str) -> dict:
    """A user's TOML (a preset, a grid file), refused when it nests deeper than any preset value: tomllib parses
    arrays by recursion, and copying or validating such data would recurse again. Syntax errors propagate, for
    the caller to word."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise too_deep(where) from None
    if data_depth(data) > MAX_NESTING:
        raise too_deep(where)
    return data
