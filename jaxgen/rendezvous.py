"""The roll call of a multi-host run, before JAX's multi-process runtime starts.

Every process of a run checks in with process 0 over one TCP connection to the run's
``--coordinator-address``; process 0 answers once all have come, and only then does each start
``jax.distributed``. A process that never comes is then one clear error on process 0 (which
processes are missing, at what address, after how long) and on the others (process 0 cannot be
reached, or did not start the run), rather than JAX's C++ abort when its own wait runs out.

Process 0 listens on the coordinator's port until the roll call ends, then closes it for JAX's
coordinator to take; the others close their connections first, so no closed connection holds
the port.
"""

from __future__ import annotations

import socket
import time

from jaxgen.errors import JaxgenError

_HELLO = "jaxgen-rendezvous"
_POLL = 0.2  # seconds between a waiting process's tries to reach process 0


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); an IPv6 host may be written in brackets."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def roll_call(address: str, num_processes: int, process_id: int, timeout: float) -> None:
    """Returns once all ``num_processes`` processes have checked in with process 0 at
    ``address``; a ``JaxgenError`` saying who is missing when that takes over ``timeout``
    seconds."""
    if num_processes == 1:
        return
    deadline = time.monotonic() + timeout
    if process_id == 0:
        _call(address, num_processes, timeout, deadline)
    else:
        _answer(address, num_processes, process_id, timeout, deadline)


def _call(address: str, num_processes: int, timeout: float, deadline: float) -> None:
    _, port = split_address(address)
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port), family=socket.AF_INET6,
                                          dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as e:
        raise JaxgenError(f"process 0 cannot listen on port {port} of --coordinator-address "
                          f"{address} ({e.strerror or e}); pass a free port.") from None
    joined: dict[int, socket.socket] = {}
    try:
        with server:
            while len(joined) < num_processes - 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = [i for i in range(1, num_processes) if i not in joined]
                    raise JaxgenError(
                        f"process{'es' if len(missing) > 1 else ''} "
                        f"{', '.join(map(str, missing))} of --num-processes {num_processes} did "
                        f"not join the run at {address} within {timeout:g} s "
                        "(--distributed-timeout); start each with the same command and its "
                        "--process-id, or check --num-processes.")
                server.settimeout(remaining)
                try:
                    conn, _ = server.accept()
                except (socket.timeout, InterruptedError):
                    continue
                peer = _greeting(conn, min(remaining, 10.0))
                if peer is None:  # not one of ours: ignore it
                    conn.close()
                    continue
                peer_id, peer_count = peer
                problem = None
                if peer_count != num_processes:
                    problem = (f"process {peer_id} was started with --num-processes "
                               f"{peer_count}, process 0 with {num_processes}; start every "
                               "process with the same --num-processes.")
                elif not 0 < peer_id < num_processes:
                    problem = (f"a process joined with --process-id {peer_id}, outside "
                               f"1..{num_processes - 1}.")
                elif peer_id in joined:
                    problem = (f"two processes were started with --process-id {peer_id}; give "
                               "each process its own.")
                if problem:
                    _send(conn, "error " + problem)
                    conn.close()
                    raise JaxgenError(problem)
                joined[peer_id] = conn
        for conn in joined.values():
            _send(conn, "go")
        for conn in joined.values():  # they close first (see the module's docstring)
            conn.settimeout(max(deadline - time.monotonic(), 1.0))
            try:
                conn.recv(1)
            except OSError:
                pass
    except JaxgenError as e:
        for conn in joined.values():
            _send(conn, f"error process 0 stopped the run: {e}")
        raise
    finally:
        for conn in joined.values():
            conn.close()


def _answer(address: str, num_processes: int, process_id: int, timeout: float,
            deadline: float) -> None:
    host, port = split_address(address)
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=_POLL * 10)
            break
        except OSError:
            if time.monotonic() + _POLL > deadline:
                raise JaxgenError(f"process {process_id} could not reach process 0 at "
                                  f"--coordinator-address {address} within {timeout:g} s "
                                  "(--distributed-timeout); start process 0 (--process-id 0) "
                                  "with the same command, and check the address.") from None
            time.sleep(_POLL)
    with conn:
        _send(conn, f"{_HELLO} {process_id} {num_processes}")
        conn.settimeout(max(deadline - time.monotonic(), 1.0))
        try:
            reply = conn.makefile("r").readline().strip()
        except (socket.timeout, OSError):
            reply = ""
        if reply.startswith("error "):
            raise JaxgenError(reply[len("error "):])
        if reply != "go":
            raise JaxgenError(f"process 0 at {address} did not start the run within "
                              f"{timeout:g} s (--distributed-timeout): not every one of the "
                              f"{num_processes} processes joined.")


def _greeting(conn: socket.socket, timeout: float):
    """(process id, process count) from a process of a jaxgen run, else None."""
    conn.settimeout(timeout)
    try:
        words = conn.makefile("r").readline().split()
    except (socket.timeout, OSError, UnicodeDecodeError):
        return None
    if len(words) != 3 or words[0] != _HELLO or not all(w.isdigit() for w in words[1:]):
        return None
    return int(words[1]), int(words[2])


def _send(conn: socket.socket, line: str) -> None:
    try:
        conn.sendall((line + "\n").encode())
    except OSError:
        pass
