"""The `fleetstage` command line.

Each subcommand lives in its own module under tools/ that defines
`register(subparsers)`; this file only lists them. A handler returns the
process exit code.
"""
import argparse
import importlib
import sys

COMMAND_MODULES = [
    "tools.agent_cmd",
    "tools.keygen",
    "tools.operator_cmd",
    "tools.local_cmd",
    "tools.mosquitto_acl",
    "tools.sim_cmd",
    "tools.check_legacy",
    "tools.bundle_cmd",
    "tools.install_cmd",
    "tools.status_cmd",
    "tools.rollout_cmd",
]


# `fleetstage agent` is the long-running process on every gateway: it loads its own
# command only (the operator tools, orchestrator and simulator cost ~4 MB resident).
RESIDENT_COMMANDS = {"agent": "tools.agent_cmd"}


def build_parser(only=None):
    parser = argparse.ArgumentParser(
        prog="fleetstage",
        description="Staged feature-flag migrations on fleets of edge gateways,"
        " with automatic rollback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if only is None else [only]:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(RESIDENT_COMMANDS.get(argv[0]) if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args) or 0


if __name__ == "__main__":
    sys.exit(main())
