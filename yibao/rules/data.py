"""Reading the rules' data files (the policy, the audit catalog): TOML, shipped with the
package or given as a path, every failure as the caller's error naming the file."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from yibao.rules.exceptions import RulesError


def read_toml(path: str | Path | None, default: str, error: type[RulesError], what: str
              ) -> dict[str, Any]:
    """The parsed document at ``path``, or the packaged ``default`` when ``path`` is None."""
    try:
        if path is None:
            text = resources.files("yibao.rules").joinpath(default).read_text("utf-8")
            where = default
        else:
            text = Path(path).read_text("utf-8")
            where = str(path)
    except OSError as exc:
        raise error(f"cannot read {what} file: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from None
