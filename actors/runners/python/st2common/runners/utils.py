# st2common.runners.utils: the pack config dict, the action logger and
# the action class constructor, as StackStorm's Python runner uses them.

import logging
import sys

__all__ = [
    "PackConfigDict",
    "get_logger_for_python_runner_action",
    "get_action_class_instance",
]

CONFIG_MISSING_ITEM_ERROR = """
Config for pack "%s" is missing key "%s".
Make sure that the config file exists on disk (configs/%s.yaml) and contains that key.

Also make sure you register the config again ("st2ctl reload --register-configs"
or "st2 pack register %s") when you add a config and after every change you make to it.
"""

_LOGGERS = {}


class PackConfigDict(dict):
    """A pack's config: a dict whose missing keys raise a ValueError that
    says how to add them, instead of a bare KeyError."""

    def __init__(self, pack_name, *args):
        super().__init__(*args)
        self._pack_name = pack_name

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            raise ValueError(
                CONFIG_MISSING_ITEM_ERROR
                % (self._pack_name, key, self._pack_name, self._pack_name)
            ) from None


def get_logger_for_python_runner_action(action_name, log_level="debug"):
    """The logger `actions.python.<action_name>`, writing to stderr at
    `log_level` and above."""
    name = "actions.python.%s" % (action_name,)
    logger = _LOGGERS.get(name)
    if logger is None:
        level = getattr(logging, str(log_level).upper(), logging.DEBUG)
        if not isinstance(level, int):
            level = logging.DEBUG
        logger = logging.getLogger(name)
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(level)
        handler.setFormatter(
            logging.Formatter("%(name)-12s: %(levelname)-8s %(message)s")
        )
        logger.addHandler(handler)
        logger.setLevel(level)
        _LOGGERS[name] = logger
    return logger


def get_action_class_instance(action_cls, config=None, action_service=None):
    """`action_cls(config=..., action_service=...)`; a class whose
    constructor takes no `action_service` gets it assigned afterwards."""
    try:
        return action_cls(config=config, action_service=action_service)
    except TypeError as e:
        if "unexpected keyword argument 'action_service'" not in str(e):
            raise
    instance = action_cls(config=config)
    instance.action_service = action_service
    return instance
