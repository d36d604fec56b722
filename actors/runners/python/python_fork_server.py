# Squall's warm start for Python actions: one process per pack virtualenv
# that has already imported the action wrapper and the st2common package,
# and forks one child per action.
#
#   python -u python_fork_server.py <socket path>
#
# Listens on the unix socket (in a directory only its owner can enter) and
# prints "ready" on stdout once it accepts. Each connection carries one
# request: a 4-byte big-endian length, then JSON {"argv", "env", "cwd"},
# with the action's stdin, stdout and stderr attached as file descriptors
# (SCM_RIGHTS). The server forks; the child makes its own process group,
# takes the three descriptors as 0, 1 and 2, its cwd and environment, and
# runs the wrapper's main(argv) as `python -u python_action_wrapper.py
# argv...` would. The server answers {"pid": N} at once and
# {"status": <wait status>} when the child has ended, then closes the
# connection. It exits when its stdin (a pipe from the node) closes.

import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback

import python_action_wrapper
import st2common.runners.base_action  # noqa: F401 (warm import)
import st2common.runners.utils  # noqa: F401 (warm import)
import st2common.services.datastore  # noqa: F401 (warm import)

MAX_REQUEST = 64 * 1024 * 1024


def read_request(conn):
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    while len(data) < 4:
        more = conn.recv(65536)
        if not more:
            raise ValueError("connection closed before the request length")
        data += more
    (length,) = struct.unpack(">I", data[:4])
    if length > MAX_REQUEST:
        raise ValueError("request of %d bytes is too large" % length)
    body = data[4:]
    while len(body) < length:
        more = conn.recv(min(1 << 20, length - len(body)))
        if not more:
            raise ValueError("connection closed inside the request")
        body += more
    if len(fds) != 3:
        raise ValueError("expected 3 file descriptors, got %d" % len(fds))
    return json.loads(body), fds


def child(request, fds, closing):
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sock in closing:
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [python_action_wrapper.__file__] + list(request["argv"])
        python_action_wrapper.main(request["argv"])
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            sys.stderr.write("%s\n" % (e.code,))
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def send(conn, message):
    try:
        conn.sendall((json.dumps(message) + "\n").encode("utf-8"))
    except OSError:
        pass


def serve(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "lifeline")
    children = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "lifeline":
                if not os.read(sys.stdin.fileno(), 4096):
                    return
            elif key.data == "wake":
                try:
                    while wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            elif key.data == "accept":
                conn, _ = listener.accept()
                try:
                    request, fds = read_request(conn)
                except Exception as e:
                    send(conn, {"error": "bad request: %s" % (e,)})
                    conn.close()
                    continue
                closing = [listener, wake_r, wake_w] + list(children.values())
                pid = os.fork()
                if pid == 0:
                    child(request, fds, closing + [conn])
                # Also from this side, so the group exists before the
                # node learns the pid (and may kill the group).
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                send(conn, {"pid": pid})
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                send(conn, {"status": status})
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
