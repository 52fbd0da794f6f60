"""The one exception type that users see as a message rather than a traceback."""


class NeurosynthError(ValueError):
    """A problem with the user's input or environment, phrased for the user.

    The CLI prints ``str(error)`` on one line and exits with status 2; the napari
    widgets show it as a notification. Raise it (or a subclass) wherever bad input
    is detected, with a message that says what is wrong and what to do instead.

    Examples
    --------
    >>> try:
    ...     raise NeurosynthError("t1.nii.gz is a 2-D image; open a 3-D volume")
    ... except ValueError as exc:   # callers that catch ValueError see it too
    ...     print(exc)
    t1.nii.gz is a 2-D image; open a 3-D volume
    >>> issubclass(CancelledError, NeurosynthError)
    True
    """


class CancelledError(NeurosynthError):
    """Raised when a long-running job was cancelled by the user."""


class NeurosynthWarning(UserWarning):
    """Input that runs but may give a misleading result (a constant volume, say).

    The CLI folds these into one ``warning:`` line each; the widgets show them as
    napari warnings; the output volume's ``metadata["warnings"]`` keeps them.
    """
