"""``python -m yibao``: the same CLI as the ``yibao`` command."""

from yibao.cli import main

if __name__ == "__main__":
    main(prog_name="yibao")
