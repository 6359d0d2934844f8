"""The errors the command line reports as one message instead of a traceback."""


class RunError(ValueError):
    """A problem with a run's inputs, options or output folder, stated for the user."""
