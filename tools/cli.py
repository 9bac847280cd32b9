"""The `fleetstage` command line.

Each subcommand lives in its own module under tools/ that defines
`register(subparsers)`; this file only lists them. A handler returns the
process exit code.
"""
import argparse
import importlib
import os
import sys

from agent import VERSION

COMMAND_MODULES = [
    "tools.agent_cmd",
    "tools.keygen",
    "tools.operator_cmd",
    "tools.local_cmd",
    "tools.mosquitto_acl",
    "tools.check_legacy",
    "tools.bundle_cmd",
    "tools.install_cmd",
    "tools.status_cmd",
    "tools.rollout_cmd",
    "tools.broker_setup",
    "tools.profile",
    "tools.flags_cmd",
]


# Commands that live in a package above tools/ register through the distribution's
# entry points (pyproject.toml: [project.entry-points."fleetstage.commands"]), so
# tools/ never imports them: `fleetstage sim` is sim/cli.py, and the simulator
# imports the orchestrator core from tools/, never the other way round.
PLUGIN_GROUP = "fleetstage.commands"


def plugin_command_modules():
    from importlib.metadata import entry_points
    return sorted(ep.value for ep in entry_points(group=PLUGIN_GROUP))


# `fleetstage agent` is the long-running process on every gateway: it loads its own
# command only (the operator tools, orchestrator and simulator cost ~4 MB resident).
RESIDENT_COMMANDS = {"agent": "tools.agent_cmd"}


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is ONE line that says what to do (and exit code 2), not argparse's
    usage block: `fleetstage publish-stage: argument stage: stage must be 1..4 (see
    fleetstage publish-stage --help)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(only=None):
    parser = OneLineParser(
        prog="fleetstage",
        description="Staged feature-flag migrations on fleets of edge gateways,"
        " with automatic rollback.",
    )
    parser.add_argument("--version", action="version", version="fleetstage " + VERSION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    names = COMMAND_MODULES + plugin_command_modules() if only is None else [only]
    for name in names:
        importlib.import_module(name).register(sub)
    return parser


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "sim" and "sim.cli" not in plugin_command_modules():
        print("fleetstage sim: the simulator is not registered with this installation;"
              " reinstall fleetstage (sh tools/bootstrap.sh, or pip install -e .)",
              file=sys.stderr)
        return 2
    parser = build_parser(RESIDENT_COMMANDS.get(argv[0]) if argv else None)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports leftovers from the top parser ("fleetstage: unrecognized
        # arguments"): name the subcommand the user ran, so the hint points at its --help
        command = _subparsers(parser).choices.get(getattr(args, "command", None) or "")
        (command or parser).error("unrecognized arguments: " + " ".join(extra))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except BrokenPipeError:
        # the reader went away (`fleetstage local status | head`): no traceback, and
        # nothing more is written to the closed pipe when Python flushes at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
