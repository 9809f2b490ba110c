"""The errors a stage reports to the user as one line (`lcsc <stage>: <message>`, exit code 2).
Kept free of torch, so that the report stage runs in its own env without it."""


class DataError(ValueError):
    """A dataset cannot be read; the message names the file or folder."""


class FeatureError(ValueError):
    """The Inception weights cannot be found or used; the message names the config key."""


class TrailError(ValueError):
    """A manifest disagrees with its files; the message names the file."""
