# st2common.exceptions.keyvalue: datastore errors.

from st2common.exceptions import StackStormBaseException

__all__ = [
    "CryptoKeyNotSetupException",
    "InvalidScopeException",
    "DataStoreKeyNotFoundError",
]


class CryptoKeyNotSetupException(StackStormBaseException):
    """No key to encrypt or decrypt datastore secrets with."""


class InvalidScopeException(StackStormBaseException):
    """A datastore scope that does not exist."""


class DataStoreKeyNotFoundError(StackStormBaseException):
    """A datastore key that does not exist."""
