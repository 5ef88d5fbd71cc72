"""Errors the user can act on. The CLI prints them as one line and exits with code 2."""


class CompressorError(Exception):
    """A problem with the user's input (path, file, recipe) rather than a bug in the tool."""
