# st2common.exceptions: StackStorm's exception roots, which pack code
# raises and catches.


class StackStormBaseException(Exception):
    """Root of StackStorm's own exceptions."""


class StackStormPluginException(StackStormBaseException):
    """Root of the exceptions of a plug-in API (actions, sensors)."""
