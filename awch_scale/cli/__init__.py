"""Command line: ``awch-scale analyze RECIPE``, ``awch-scale validate RECIPE``,
``awch-scale show STORE``, ``awch-scale plot|report STORE``, ``awch-scale table STORE...``,
``awch-scale sweep RECIPE --grid KEY=V1,V2``.

Errors caused by input (recipe, data, target layer, store) are printed as one
paragraph without a traceback and exit with status 2; nothing is written.

``analyze --nproc N`` (or ``torchrun --nproc-per-node N awch-scale analyze RECIPE``)
shares every analysis among N processes (:mod:`awch_scale.run.processes`; rank 0 trains
and writes, see :mod:`awch_scale.run.ranks`); ``--nproc 1``, the default, is the
one-process path with no communication at all.

The commands live in :mod:`~awch_scale.cli.run_commands` (analyze, validate, verify),
:mod:`~awch_scale.cli.result_commands` (show, plot, report, table) and
:mod:`~awch_scale.cli.sweep_command`; what they share (the app, messages, exit codes) in
:mod:`~awch_scale.cli.common`. Each imports the library lazily, inside the command, so
that ``--help`` answers at once.
"""

from __future__ import annotations

from awch_scale.cli import result_commands, run_commands, sweep_command  # noqa: F401
from awch_scale.cli.common import EXIT_DAMAGED, EXIT_FAILURES, app
from awch_scale.results.format import paragraphs

__all__ = ["EXIT_DAMAGED", "EXIT_FAILURES", "app", "main"]

ORDER = ("analyze", "validate", "verify", "show", "plot", "report", "table", "sweep")
"""The order of the commands in ``--help``: running, checking, reading, sweeping."""
app.registered_commands.sort(key=lambda c: ORDER.index(c.callback.__name__))
for _command in app.registered_commands:  # help paragraphs unbroken: the terminal wraps them
    _command.help = paragraphs(_command.help or _command.callback.__doc__)


def main() -> None:  # pragma: no cover
    """Console entry point."""
    app()
