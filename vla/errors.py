"""Errors a user can act on. The command line prints them as one line, without a traceback."""


class VLAError(Exception):
    """Bad input or state that the user can fix: the message says what and where."""


class DatasetError(VLAError):
    pass


class ConfigError(VLAError):
    pass


class CheckpointError(VLAError):
    pass
