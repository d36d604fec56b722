# st2common.runners.base_action: the base class of StackStorm Python
# actions. An action implements run(**parameters); the runner gives it the
# pack's config and an action_service (datastore access).

import abc

from st2common.runners.utils import PackConfigDict
from st2common.runners.utils import get_logger_for_python_runner_action

__all__ = ["Action"]


class Action(object, metaclass=abc.ABCMeta):
    """Base class of Python actions: `self.config` (the pack's config),
    `self.action_service` and `self.logger` (to stderr, at the run's
    log_level)."""

    description = None

    def __init__(self, config=None, action_service=None):
        self.config = config or {}
        self.action_service = action_service
        wrapper = getattr(action_service, "_action_wrapper", None)
        log_level = getattr(wrapper, "_log_level", "debug")
        pack_name = getattr(wrapper, "_pack", "unknown")
        self.config = PackConfigDict(pack_name, self.config)
        self.logger = get_logger_for_python_runner_action(
            action_name=self.__class__.__name__, log_level=log_level
        )

    @abc.abstractmethod
    def run(self, **kwargs):
        """Does the action's work; returns its result, or (succeeded, result)."""
