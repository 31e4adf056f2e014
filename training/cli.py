"""
The command-line runner every command shares. A command is a function of its parsed arguments, run as

    def main(argv):
        return cli.run(predict, __doc__, argv, options=add_options)

--help prints the command's docstring and its options. Without options of its own, a command takes a config,
`[config.yaml] [section.key=value ...]`, and finds it loaded in args.cfg: defaults <- YAML <- overrides. Whatever
goes wrong ends the same way in every command:
    bad input (a config, data or command-line error)   one line naming where the value was set, exit 2
    a run that failed after it started (Failed, OOM)    one line, exit 1
    Ctrl-C                                              one line, exit 130
"""
import argparse
import os
import sys

import torch

from data import DataError
from training import config
from training.config import ConfigError


class Failed(RuntimeError):
    """A run that started and cannot go on, for a reason the user can act on (e.g. a loss that stays nan)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit; here it is one line like any bad input
        raise ConfigError(f"command line: {message} (see python {self.prog} --help)")


def run(command, doc, argv, *, options=None, takes_config=None, interrupted="stopped by Ctrl-C; no output was written",
        out_of_memory="lower the batch size"):
    """Parses argv, runs command(args) and returns the exit status (command's, or 0 when it returns None).
    options(parser) adds the command's own arguments; takes_config (default: when it has none) adds the config
    and its overrides."""
    parser = Parser(prog=os.path.basename(command.__code__.co_filename), description=doc.strip("\n"),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    takes_config = options is None if takes_config is None else takes_config
    if options:
        options(parser)
    if takes_config:
        parser.add_argument("config", nargs="?", default="config.yaml", help="a YAML config (default: config.yaml)")
        parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                            help="a setting, its value parsed as YAML, over the config's")
    path, overrides = None, []
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, printed; an error in the arguments comes as a ConfigError instead
            return e.code
        if takes_config:
            if "=" in args.config:  # no config file was named: the first argument is an override
                args.overrides, args.config = [args.config, *args.overrides], "config.yaml"
            path, overrides = args.config, args.overrides
            args.cfg = config.load(path, overrides)
        status = command(args)
    except (ConfigError, DataError) as e:
        return fail(config.locate(str(e), path, overrides), 2)
    except Failed as e:
        return fail(str(e), 1)
    except torch.cuda.OutOfMemoryError:
        return fail(f"CUDA out of memory: {out_of_memory}", 1)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return status or 0


def fail(message, status):
    print(f"error: {message}", file=sys.stderr)
    return status
