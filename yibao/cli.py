"""The `yibao` command line.

Every option can also be set from a ``YIBAO_*`` environment variable, shown in ``--help``
(``auto_envvar_prefix`` + ``show_default``), so a container or CI job configures yibao the
same way an operator at a terminal does.
"""

from __future__ import annotations

import click

CONTEXT = {"auto_envvar_prefix": "YIBAO", "show_default": True, "help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
def main() -> None:
    """yibao: event-sourced medical insurance settlement on Kafka."""


if __name__ == "__main__":  # pragma: no cover
    main()
