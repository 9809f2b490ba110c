"""The errors a stage reports to the user as one line (`lcsc <stage>: <message>`, exit code 2).
Kept free of torch, so that the report stage runs in its own env without it.

Each message has the form `<file or key>: <what is wrong>; <what to do>`. lcsc.cli.main prints
every LcscError (and an OSError) that way; any other exception is a bug and
keeps its traceback."""


class LcscError(Exception):
    """An expected failure the user can fix; main prints it as one line."""


class ConfigError(LcscError, ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class InputError(LcscError, ValueError):
    """A file cannot be read or parsed (truncated, foreign, missing keys); the message starts with its path."""


class UsageError(LcscError, ValueError):
    """A command-line argument is malformed; the message starts with the flag."""


class BusyError(LcscError, RuntimeError):
    """Another process holds the lock on a file (a second search on the same journal)."""


class DataError(LcscError, ValueError):
    """A dataset cannot be read; the message names the file or folder."""


class FeatureError(LcscError, ValueError):
    """The Inception weights cannot be found or used; the message names the config key."""


class TrailError(LcscError, ValueError):
    """A manifest disagrees with its files; the message names the file."""


class TrainingError(LcscError, RuntimeError):
    """Training cannot go on (a non-finite loss)."""


class StoreError(LcscError):
    """The MLflow store failed while `lcsc mlflow-sync` logged the records; they are kept."""
