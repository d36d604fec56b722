# Runs one StackStorm Python action for Squall's python-script runner, as
# StackStorm's python_action_wrapper.py does:
#
#   python -u python_action_wrapper.py --pack=P --file-path=/abs/action.py
#       [--user=U] (--parameters=JSON | --stdin-parameters) [--stdin-config]
#       [--log-level=L]
#
# With --stdin-parameters or --stdin-config, one JSON line
# {"parameters": {...}, "config": {...}} arrives on stdin (the pack config
# always travels this way, so its secrets never show in the process list).
# The action's class is chosen as StackStorm chooses it, constructed with
# `config` and `action_service`, and `run(**parameters)` is called; the
# result is printed between StackStorm's delimiters as
# {"result": ..., "status": true | false | null}. A status that is
# neither a bool nor None exits with 220.

import argparse
import importlib.util
import inspect
import json
import logging
import os
import select
import sys
import sysconfig
import traceback

DELIMITER = "%%%%%~=~=~=************=~=~=~%%%%"
INVALID_STATUS_EXIT_CODE = 220
# Seconds to wait for the stdin line.
READ_STDIN_INPUT_TIMEOUT = 2
SYSTEM_SCOPE = "system"

INVALID_STATUS_ERROR_MESSAGE = """
If this is an existing action which returns a tuple with two items, it needs to be updated to
either:

1. Return a list instead of a tuple
2. Return a tuple where a first items is a status flag - (True, ('item1', 'item2'))
""".strip()

LOG = logging.getLogger("PythonActionWrapper")


class ActionService(object):
    """What the action gets as `self.action_service`: the datastore, as the
    execution's user, under the prefix "<pack>.<ClassName>:"."""

    def __init__(self, action_wrapper):
        self._action_wrapper = action_wrapper
        self._datastore_service = None

    @property
    def datastore_service(self):
        from st2common.runners.utils import get_logger_for_python_runner_action
        from st2common.services.datastore import DatastoreService

        if self._datastore_service is None:
            wrapper = self._action_wrapper
            self._datastore_service = DatastoreService(
                logger=get_logger_for_python_runner_action(
                    action_name=wrapper._class_name, log_level=wrapper._log_level
                ),
                pack_name=wrapper._pack,
                class_name=wrapper._class_name,
                api_url=os.environ.get("ST2_ACTION_API_URL"),
                token=os.environ.get("ST2_ACTION_AUTH_TOKEN"),
            )
        return self._datastore_service

    def get_user_info(self):
        return self.datastore_service.get_user_info()

    def list_values(self, local=True, prefix=None, limit=None, offset=None):
        return self.datastore_service.list_values(
            local=local, prefix=prefix, limit=limit, offset=offset
        )

    def get_value(self, name, local=True, scope=SYSTEM_SCOPE, decrypt=False):
        return self.datastore_service.get_value(
            name=name, local=local, scope=scope, decrypt=decrypt
        )

    def set_value(
        self, name, value, ttl=None, local=True, scope=SYSTEM_SCOPE, encrypt=False
    ):
        return self.datastore_service.set_value(
            name=name, value=value, ttl=ttl, local=local, scope=scope, encrypt=encrypt
        )

    def delete_value(self, name, local=True, scope=SYSTEM_SCOPE):
        return self.datastore_service.delete_value(name=name, local=local, scope=scope)


def implements_run(cls):
    """Whether `cls` has a concrete `run` (StackStorm's check of the
    Action base class's abstract methods)."""
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name == "run" and not getattr(member, "__isabstractmethod__", False):
            return True
    return False


def load_action_classes(file_path):
    """The classes defined in the action module that implement run(), in
    alphabetical order (StackStorm's loader.register_plugin)."""
    from st2common.runners.base_action import Action

    directory = os.path.dirname(os.path.realpath(file_path))
    if directory not in sys.path and directory + os.sep not in sys.path:
        sys.path.append(directory)
    module_name = os.path.basename(file_path)
    if module_name.endswith(".py"):
        module_name = module_name[: -len(".py")]
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None:
        raise ImportError("%s is not a Python module" % (file_path,))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != module.__name__:
            continue
        if not implements_run(cls):
            LOG.debug('Class "%s" does not implement "run"; skipped', cls.__name__)
            continue
        Action.register(cls)
        found.append(cls)
    return found


class PythonActionWrapper(object):
    def __init__(self, pack, file_path, config, parameters, user, log_level):
        self._pack = pack
        self._file_path = file_path
        self._config = config
        self._parameters = parameters
        self._user = user
        self._log_level = log_level
        self._class_name = None

    def run(self):
        action = self._get_action_instance()
        output = action.run(**self._parameters)
        if isinstance(output, tuple) and len(output) == 2:
            status, result = output
        else:
            status, result = None, output
        if status is not None and not isinstance(status, bool):
            sys.stderr.write(
                "Status returned from the action run() method must either be "
                "True or False, got: %s\n" % (status,)
            )
            sys.stderr.write(INVALID_STATUS_ERROR_MESSAGE + "\n")
            sys.stderr.flush()
            sys.exit(INVALID_STATUS_EXIT_CODE)
        printed = {"result": result, "status": status}
        if status is not None:
            try:
                json.dumps(result)
            except (TypeError, ValueError):
                printed["result"] = str(result)
        try:
            text = json.dumps(printed)
        except (TypeError, ValueError):
            text = str(printed)
        sys.stdout.flush()
        out = sys.stdout.buffer
        out.write(DELIMITER.encode("utf-8"))
        out.write(text.encode("utf-8") + b"\n")
        out.write(DELIMITER.encode("utf-8"))
        sys.stdout.flush()

    def _get_action_instance(self):
        from st2common.runners.utils import PackConfigDict, get_action_class_instance

        try:
            classes = load_action_classes(self._file_path)
        except Exception as e:
            message = (
                'Failed to load action class from file "%s" (action file most likely '
                "doesn't exist or contains invalid syntax): %s\n\n%s"
                % (self._file_path, e, traceback.format_exc())
            )
            try:
                error = type(e)(message)
            except Exception:
                error = Exception(message)
            raise error from None
        if not classes:
            raise Exception(
                'Found no classes in plugin file "%s" matching requirements.'
                % (self._file_path,)
            )
        action_cls = classes[0]
        self._class_name = action_cls.__name__
        return get_action_class_instance(
            action_cls,
            config=PackConfigDict(self._pack, self._config),
            action_service=ActionService(self),
        )


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Squall's Python action wrapper")
    parser.add_argument("--pack", required=True)
    parser.add_argument("--file-path", required=True)
    parser.add_argument("--user", required=False)
    parser.add_argument("--parameters", required=False)
    parser.add_argument("--stdin-parameters", action="store_true")
    parser.add_argument("--stdin-config", action="store_true")
    parser.add_argument("--config", required=False)
    parser.add_argument("--parent-args", required=False)
    parser.add_argument("--log-level", required=False, default="DEBUG")
    return parser.parse_args(argv)


def read_stdin_line():
    ready, _, _ = select.select([sys.stdin], [], [], READ_STDIN_INPUT_TIMEOUT)
    if not ready:
        raise ValueError(
            "No input received and timed out while waiting for parameters from stdin"
        )
    line = sys.stdin.readline().strip()
    if not line:
        raise ValueError("Received no valid parameters data from sys.stdin")
    try:
        data = json.loads(line)
    except ValueError as e:
        raise ValueError(
            "Failed to parse parameters from stdin. Expected a JSON object with "
            '"parameters" attribute: %s' % (e,)
        ) from None
    if not isinstance(data, dict):
        raise ValueError("stdin must carry a JSON object, got %r" % (line[:100],))
    return data


def prepare_sys_path():
    # The pack's virtualenv libraries come before anything else, so a
    # pack's version of a library beats any other copy (StackStorm PR #4571).
    platlib = sysconfig.get_path("platlib")
    if platlib:
        sys.path.insert(0, platlib)


def main(argv=None):
    args = parse_args(argv)
    prepare_sys_path()
    config = json.loads(args.config) if args.config else {}
    parameters = json.loads(args.parameters) if args.parameters else {}
    if args.stdin_parameters or args.stdin_config:
        data = read_stdin_line()
        if args.stdin_parameters:
            parameters.update(data.get("parameters") or {})
        if args.stdin_config:
            config = data.get("config") or {}
    if not isinstance(config, dict):
        raise TypeError("Pack config needs to be a dictionary (was %s)." % type(config))
    PythonActionWrapper(
        pack=args.pack,
        file_path=args.file_path,
        config=config,
        parameters=parameters,
        user=args.user,
        log_level=args.log_level,
    ).run()


if __name__ == "__main__":
    main()
