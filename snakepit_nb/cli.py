"""``snakepit-nb``: install the "Python (snakepit)" kernel, run a notebook headless.

snakepit-nb install-kernel --user            # or --sys-prefix, or --prefix DIR
snakepit-nb run-notebook notebooks/quickstart.ipynb --html out/quickstart.html
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _install_kernel(args: argparse.Namespace) -> int:
    from kernel_ext import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    dest = install(user=args.user, prefix=prefix, name=args.name, display_name=args.display_name)
    print(f"installed kernelspec {args.name!r} ({args.display_name}) in {dest}")
    print("pick it in JupyterLab's launcher, or: jupyter lab  ->  Kernel > Change Kernel")
    return 0


def _run_notebook(args: argparse.Namespace) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(args.notebook)
    if not path.is_file():
        print(f"snakepit-nb: no notebook at {path}", file=sys.stderr)
        return 2
    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    client = NotebookClient(
        nb,
        timeout=args.timeout,
        kernel_name=args.kernel or nb.metadata.get("kernelspec", {}).get("name", "python3"),
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
    )
    failed = False
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = True
        print(f"snakepit-nb: a cell failed in {path}:\n{exc}", file=sys.stderr)
    if args.output:
        nbformat.write(nb, args.output)  # type: ignore[no-untyped-call]
        print(f"wrote the executed notebook to {args.output}")
    if args.html:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nb)  # type: ignore[no-untyped-call]
        out = Path(args.html)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body, encoding="utf-8")
        print(f"wrote {out}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snakepit-nb", description="snakepit_nb's command line: kernelspec and notebooks."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    inst = sub.add_parser("install-kernel", help='install the "Python (snakepit)" kernelspec')
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="in the active environment")
    where.add_argument("--prefix", help="under PREFIX/share/jupyter/kernels")
    inst.add_argument("--name", default="snakepit", help="kernel name (default: snakepit)")
    inst.add_argument("--display-name", default="Python (snakepit)", help="name in the launcher")
    inst.set_defaults(func=_install_kernel)

    run = sub.add_parser("run-notebook", help="execute a notebook headless (nbclient)")
    run.add_argument("notebook", help="the .ipynb to run")
    run.add_argument("--kernel", help="kernel name (default: the notebook's)")
    run.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    run.add_argument("--output", help="write the executed notebook here")
    run.add_argument("--html", help="write an HTML copy (widget state included) here")
    run.set_defaults(func=_run_notebook)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
