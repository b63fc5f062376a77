"""``clix-worker``: operational verbs for the trigger pipeline.

One module per verb group, registered on :data:`cli` here:

==========================  ==============================================
module                      verbs
==========================  ==============================================
:mod:`worker.cli.enqueue`   ``enqueue``
:mod:`worker.cli.status`    ``status``
:mod:`worker.cli.cancel`    ``cancel``
:mod:`worker.cli.check`     ``check``
:mod:`worker.cli.health`    ``health``
:mod:`worker.cli.dlq`       ``dlq list / show / stats / replay / purge``
:mod:`worker.cli.plan`      ``plan validate / init``
:mod:`worker.cli.processes` ``sandbox``, ``metrics``, ``up``
==========================  ==============================================

:mod:`worker.cli.console` is how every verb talks to its caller (exit codes,
errors, JSON or human output); :mod:`worker.cli.bulk` and
:mod:`worker.cli.time_filter` serve the DLQ verbs.

Exit codes (DESIGN.md section 4): :data:`RET_OK` success; :data:`RET_FAILED`
the operation failed or what was checked is invalid (``enqueue`` refusing a
trigger, ``replay`` of an id not in the DLQ, ``status`` of an unknown key);
:data:`RET_USAGE` bad usage (unknown option, missing or unreadable file).

None of the inspection verbs (``status``, ``dlq ...``) nor ``enqueue`` need
the Clix API key.
"""

from __future__ import annotations

import click

from worker.cli.console import RET_FAILED, RET_OK, RET_USAGE

__all__ = ["RET_FAILED", "RET_OK", "RET_USAGE", "cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Trigger Clix campaigns from a queue: enqueue, inspect, operate the dead-letter queue."""


def _register_commands() -> None:
    from worker.cli.cancel import cancel
    from worker.cli.check import check
    from worker.cli.dlq import dlq
    from worker.cli.enqueue import enqueue
    from worker.cli.health import health
    from worker.cli.plan import plan
    from worker.cli.processes import metrics, sandbox, up
    from worker.cli.status import status

    for command in (enqueue, status, cancel, check, health, sandbox, metrics, up, dlq, plan):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    import redis

    try:
        cli.main(args=argv, prog_name="clix-worker", standalone_mode=True)
    except redis.RedisError as exc:
        click.echo(
            f"clix-worker: Redis error ({type(exc).__name__}): {exc}; check REDIS_URL", err=True
        )
        return RET_FAILED
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else RET_FAILED
    return RET_OK
