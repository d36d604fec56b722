# Runs one StackStorm Python action for Squall's python-script runner.
#
# Reads one JSON line on stdin: {"entry_point", "pack_path", "config",
# "parameters"}. Provides the minimal `st2common.runners.base_action.Action`
# actions subclass (config, logger, action_service, run(**parameters)),
# runs the action's class, and prints its result between StackStorm's
# delimiters as {"result": ..., "status": true | false | null}, as
# StackStorm's python_action_wrapper.py does.

import importlib.util
import inspect
import json
import logging
import os
import sys
import types

DELIMITER = "%%%%%~=~=~=************=~=~=~%%%%"
INVALID_STATUS_EXIT_CODE = 220


class Action(object):
    """The base class of StackStorm Python actions."""

    def __init__(self, config=None, action_service=None):
        self.config = config or {}
        self.action_service = action_service
        self.logger = logging.getLogger(self.__class__.__name__)

    def run(self, **kwargs):
        raise NotImplementedError()


def provide_st2common():
    names = ["st2common", "st2common.runners", "st2common.runners.base_action"]
    modules = [types.ModuleType(name) for name in names]
    modules[2].Action = Action
    modules[0].runners = modules[1]
    modules[1].base_action = modules[2]
    for name, module in zip(names, modules):
        sys.modules.setdefault(name, module)


def action_class(module):
    found = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if issubclass(member, Action)
        and member is not Action
        and member.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise Exception(
            "%s must define exactly one Action class, found %d"
            % (module.__file__, len(found))
        )
    return found[0]


def main():
    request = json.loads(sys.stdin.readline())
    entry_point = request["entry_point"]
    pack_path = request["pack_path"]
    for path in [
        os.path.join(pack_path, "lib"),
        os.path.join(pack_path, "actions", "lib"),
        os.path.dirname(entry_point),
    ]:
        sys.path.insert(0, path)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    provide_st2common()

    spec = importlib.util.spec_from_file_location("squall_action", entry_point)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    action = action_class(module)(config=request.get("config") or {})
    output = action.run(**request["parameters"])

    status = None
    result = output
    if isinstance(output, tuple) and len(output) == 2:
        status, result = output
        if not isinstance(status, bool):
            sys.stderr.write(
                "Status returned from the action run() method must either be "
                "True or False, got: %s\n" % (status,)
            )
            sys.exit(INVALID_STATUS_EXIT_CODE)
    try:
        printed = json.dumps({"result": result, "status": status})
    except (TypeError, ValueError):
        printed = json.dumps({"result": str(result), "status": status})
    sys.stdout.write(DELIMITER + printed + "\n" + DELIMITER)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
