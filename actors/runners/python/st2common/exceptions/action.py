# st2common.exceptions.action: errors about actions and their parameters.
# Exchange packs raise InvalidActionParameterException from run().

from st2common.exceptions import StackStormBaseException

__all__ = [
    "ParameterRenderingFailedException",
    "InvalidActionReferencedException",
    "InvalidActionParameterException",
]


class ParameterRenderingFailedException(StackStormBaseException):
    """A parameter's template could not be rendered."""


class InvalidActionReferencedException(StackStormBaseException):
    """The referenced action does not exist."""


class InvalidActionParameterException(StackStormBaseException):
    """A parameter value the action cannot work with."""
