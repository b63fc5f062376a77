"""Verbs that run long-lived processes: ``sandbox``, ``metrics`` and ``up``.

Each hands over to the module that owns the process (``worker.sandbox``,
``worker.metrics``, ``worker.quickstart``) and exits with its code.
"""

from __future__ import annotations

import sys

import click

from config.settings import DEFAULT_CONCURRENCY

__all__ = ["metrics", "sandbox", "up"]


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sandbox(args: tuple[str, ...]) -> None:
    """Run the local Clix-compatible sandbox server (see `clix-worker sandbox --help`)."""
    from worker.sandbox import main as sandbox_main

    sys.exit(sandbox_main(list(args)))


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def metrics(args: tuple[str, ...]) -> None:
    """Serve Prometheus metrics of workers sharing PROMETHEUS_MULTIPROC_DIR (see --help)."""
    from worker.metrics import main as metrics_main

    sys.exit(metrics_main(list(args)))


@click.command()
@click.option("--flower-port", default=5555, show_default=True)
@click.option(
    "--concurrency",
    "-c",
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Deliveries at once (threads of the worker, as the plain worker command runs).",
)
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Enqueue one demo trigger and print its result.",
)
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo trigger is done.")
def up(flower_port: int, concurrency: int, demo: bool, exit_after_demo: bool) -> None:
    """Run everything on embedded defaults: Redis, sandbox (without credentials), worker, Flower."""
    from worker.quickstart import run

    sys.exit(
        run(
            flower_port=flower_port,
            concurrency=concurrency,
            demo=demo,
            exit_after_demo=exit_after_demo,
        )
    )
