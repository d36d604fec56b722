# Runs one StackStorm sensor for a Squall node, in a process of its own.
#
#   python sensor_wrapper.py --pack=<pack> --file-path=<abs .py>
#       --class-name=<class> [--trigger-type-refs=<a,b>] [--poll-interval=<n>]
#
# The node and this process talk over the pipes it inherits, one JSON
# object per line:
# - stdout carries events to the node: {"event": "ready"} once setup()
#   returned, {"event": "dispatch", "trigger", "payload", "trace_tag"} for
#   every sensor_service.dispatch(), {"event": "error", "message"} before a
#   failure exit. The sensor's own prints (fd 1 included) go to stderr.
# - stdin carries the pack's config first, {"config": {...}}, then the
#   node's commands: {"op": "add_trigger" |
#   "update_trigger" | "remove_trigger", "trigger": {...}} and
#   {"op": "token", "token": "..."} (a renewed API token). End of input
#   means the node is gone: the sensor stops.
# - stderr is the sensor's log, which the node keeps.
#
# SIGTERM stops the sensor: cleanup() runs and the process exits 0. The
# process is SIGKILLed when the node dies (PR_SET_PDEATHSIG).

import argparse
import importlib.util
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

SENSOR_METHODS = (
    "setup",
    "run",
    "cleanup",
    "add_trigger",
    "update_trigger",
    "remove_trigger",
)
TRIGGER_OPS = ("add_trigger", "update_trigger", "remove_trigger")


class Events(object):
    """The line-per-event pipe to the node, shared by the sensor's threads."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event):
        line = json.dumps(event) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


class SensorService(object):
    """What a sensor gets as `self.sensor_service`."""

    def __init__(self, events, pack, class_name):
        self._events = events
        self._pack = pack
        self._class_name = class_name
        self._datastore = None

    def get_logger(self, name):
        return logging.getLogger(
            "SensorWrapper.%s.%s.%s" % (self._pack, self._class_name, name)
        )

    def dispatch(self, trigger, payload=None, trace_tag=None):
        self._send(trigger, payload, trace_tag)

    def dispatch_with_context(self, trigger, payload=None, trace_context=None):
        trace_tag = getattr(trace_context, "trace_tag", None)
        if trace_tag is None and isinstance(trace_context, dict):
            trace_tag = trace_context.get("trace_tag")
        self._send(trigger, payload, trace_tag)

    def _send(self, trigger, payload, trace_tag):
        if isinstance(trigger, dict):
            trigger = trigger.get("ref") or "%s.%s" % (
                trigger.get("pack"),
                trigger.get("name") or trigger.get("type"),
            )
        if payload is not None and not isinstance(payload, dict):
            raise TypeError(
                "The trigger payload must be a dict, not %s" % type(payload).__name__
            )
        event = {"event": "dispatch", "trigger": str(trigger), "payload": payload}
        if trace_tag is not None:
            event["trace_tag"] = str(trace_tag)
        self._events.send(event)

    @property
    def datastore_service(self):
        if self._datastore is None:
            from st2common.services.datastore import DatastoreService

            self._datastore = DatastoreService(
                logger=self.get_logger("DatastoreService"),
                pack_name=self._pack,
                class_name=self._class_name,
                api_url=os.environ.get("ST2_API_URL"),
                token=os.environ.get("ST2_AUTH_TOKEN"),
            )
        return self._datastore

    def renew_token(self, token):
        os.environ["ST2_AUTH_TOKEN"] = token
        self._datastore = None

    def get_user_info(self):
        return self.datastore_service.get_user_info()

    def list_values(self, local=True, prefix=None, limit=None, offset=0):
        return self.datastore_service.list_values(
            local=local, prefix=prefix, limit=limit, offset=offset
        )

    def get_value(self, name, local=True, scope="system", decrypt=False):
        return self.datastore_service.get_value(
            name, local=local, scope=scope, decrypt=decrypt
        )

    def set_value(
        self, name, value, ttl=None, local=True, scope="system", encrypt=False
    ):
        return self.datastore_service.set_value(
            name, value, ttl=ttl, local=local, scope=scope, encrypt=encrypt
        )

    def delete_value(self, name, local=True, scope="system"):
        return self.datastore_service.delete_value(name, local=local, scope=scope)


class Fatal(Exception):
    """A failure the node shows as the sensor's last error."""


def load_class(file_path, class_name):
    if not os.path.isfile(file_path):
        raise Fatal('Sensor file "%s" does not exist' % file_path)
    directory = os.path.dirname(file_path)
    if directory not in sys.path:
        sys.path.append(directory)
    module_name = os.path.splitext(os.path.basename(file_path))[0]
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise Fatal(
            'Failed to load sensor class from file "%s": %s: %s\n%s'
            % (file_path, type(e).__name__, e, traceback.format_exc())
        )
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        found = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isclass(value) and value.__module__ == module_name
        )
        raise Fatal(
            'Sensor class "%s" not found in file "%s" (classes there: %s)'
            % (class_name, file_path, ", ".join(found) or "none")
        )
    missing = [m for m in SENSOR_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise Fatal(
            'Class "%s" in file "%s" is not a sensor: it lacks %s'
            % (class_name, file_path, ", ".join(missing))
        )
    return cls


def read_config():
    """The first line on stdin: {"config": {...}}, the pack's config."""
    line = sys.stdin.readline()
    if not line:
        raise Fatal("The node closed the pipe before sending the pack config")
    return json.loads(line).get("config") or {}


def instantiate(cls, service, config, poll_interval):
    from st2reactor.sensor.base import PollingSensor

    kwargs = {"sensor_service": service, "config": config}
    if poll_interval is not None and issubclass(cls, PollingSensor):
        kwargs["poll_interval"] = poll_interval
    return cls(**kwargs)


class Commands(threading.Thread):
    """Reads the node's commands; trigger changes wait for setup()."""

    def __init__(self, sensor, service, set_up, log):
        super(Commands, self).__init__(name="squall-commands", daemon=True)
        self._sensor = sensor
        self._service = service
        self._set_up = set_up
        self._log = log

    def run(self):
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                command = json.loads(line)
            except ValueError as e:
                self._log.error("Unreadable command from the node: %s", e)
                continue
            op = command.get("op")
            if op == "token":
                self._service.renew_token(command.get("token") or "")
            elif op in TRIGGER_OPS:
                self._set_up.wait()
                try:
                    getattr(self._sensor, op)(command.get("trigger") or {})
                except Exception:
                    self._log.exception("%s failed", op)
            else:
                self._log.error("Unknown command from the node: %r", op)
        # The node is gone: stop as on SIGTERM.
        os.kill(os.getpid(), signal.SIGTERM)


def die_with_node():
    """SIGKILL this process when the node that started it dies."""
    node = os.environ.get("SQUALL_NODE_PID")
    if not node or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(node):
        # The node died before the request took effect.
        os._exit(1)


class Stop(object):
    """SIGTERM: the main thread raises SystemExit once, so cleanup() runs."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if not self.requested:
            self.requested = True
            raise SystemExit(0)


def wake_main_thread_on_sigterm():
    """Makes SIGTERM reach the main thread's Python code promptly.

    Python runs signal handlers in the main thread, and only once it runs
    Python code again: a signal that lands in another thread, or just
    before the main thread enters a long sleep (a PollingSensor sleeps its
    whole interval), would wait for the sleep to end. The handler writes
    the signal to a wakeup pipe; a helper thread reading it re-sends
    SIGTERM to the main thread until the process ends, which interrupts
    whatever it waits on.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    main = threading.main_thread().ident

    def poke():
        while signal.SIGTERM not in os.read(read_end, 512):
            pass
        while True:
            signal.pthread_kill(main, signal.SIGTERM)
            time.sleep(0.1)

    threading.Thread(target=poke, name="squall-sigterm", daemon=True).start()


def main():
    die_with_node()
    parser = argparse.ArgumentParser(description="Runs one StackStorm sensor.")
    parser.add_argument("--pack", required=True)
    parser.add_argument("--file-path", required=True)
    parser.add_argument("--class-name", required=True)
    parser.add_argument("--trigger-type-refs", default="")
    parser.add_argument("--poll-interval", type=int, default=None)
    args = parser.parse_args()

    # Events get the real stdout; everything else written to fd 1 goes to
    # stderr, so a print() cannot corrupt the event stream.
    events = Events(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("SensorWrapper.%s.%s" % (args.pack, args.class_name))
    signal.signal(signal.SIGTERM, Stop())
    wake_main_thread_on_sigterm()

    sensor = None
    try:
        config = read_config()
        cls = load_class(args.file_path, args.class_name)
        service = SensorService(events, args.pack, args.class_name)
        sensor = instantiate(cls, service, config, args.poll_interval)
        set_up = threading.Event()
        Commands(sensor, service, set_up, log).start()
        sensor.setup()
        set_up.set()
        events.send({"event": "ready"})
        log.info("Sensor %s.%s is running", args.pack, args.class_name)
        sensor.run()
    except SystemExit:
        pass
    except Fatal as e:
        message = str(e)
        sys.stderr.write(message + "\n")
        events.send({"event": "error", "message": message.splitlines()[0]})
        sys.exit(1)
    except Exception as e:
        traceback.print_exc()
        where = "setup()" if sensor is not None and not set_up.is_set() else "run()"
        if sensor is None:
            where = "__init__()"
        events.send(
            {
                "event": "error",
                "message": "%s raised %s: %s" % (where, type(e).__name__, e),
            }
        )
        sys.exit(1)
    finally:
        if sensor is not None:
            try:
                sensor.cleanup()
            except Exception:
                log.exception("cleanup() failed")
    log.info("Sensor %s.%s stopped", args.pack, args.class_name)


if __name__ == "__main__":
    main()
