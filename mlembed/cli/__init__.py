"""The one front door: ``mlembed COMMAND`` and ``python -m mlembed COMMAND`` (see ``mlembed --help``).

One module per subcommand (train: Lightning's four; shards, export, evaluate, sweep), the resume checks, the
error contract and the process-group teardown each in its own file. Library modules carry no argparse.
Lightning is imported only by the commands that train (``export`` and ``evaluate`` run without it).
"""

from mlembed.cli.errors import TRACEBACK_ENV, user_error
from mlembed.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "TRACEBACK_ENV", "main", "user_error"]
