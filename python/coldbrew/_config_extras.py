"""The parts of :mod:`coldbrew.config` that a plain ``coldbrew MODULE:APP`` never needs.

Kept out of config.py so that starting the server neither compiles nor runs
them: the argparse parser, for --help, --version, errors and command lines the
fast parser leaves to argparse.
"""

import argparse

from coldbrew import config
from coldbrew.config import _APP_HELP, _EPILOG, _OPTIONS, PROG, USAGE, ConfigError, parse_app


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{PROG} {config._version()}")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def build_parser():
    parser = _Parser(
        prog=PROG,
        usage=USAGE,
        description="Serve a Python WSGI application.",
        epilog=_EPILOG,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("app", nargs="?", metavar="APP", type=parse_app, help=_APP_HELP)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    for dest, flags, metavar, converter, repeatable, help_text in _OPTIONS:
        if metavar is None:
            parser.add_argument(*flags, dest=dest, action="store_const", const=True, help=help_text)
            continue
        parser.add_argument(
            *flags,
            dest=dest,
            metavar=metavar,
            type=converter,
            action="append" if repeatable else "store",
            help=help_text,
        )
    return parser
