"""The listening sockets of ``runner serve``, bound before anything says it is serving there."""

from __future__ import annotations

import errno
import socket

from runner.errors import UsageError

__all__ = ["listen"]


def listen(host: str, port: int) -> list[socket.socket]:
    """A listening socket for each address ``host`` resolves to (port 0: a free port, the same on each).

    A busy port, a port that needs privileges or a host that is not this machine's is a UsageError
    that names it and says which flag to change.
    """
    name = host.removeprefix("[").removesuffix("]")  # [::1], as in a URL
    try:
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"--host {host}: not an address this machine can listen on ({exc.strerror}); try 127.0.0.1"
        ) from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 address has its own
            sock.bind((address[0], port, *address[2:]))
            sock.listen()
            port = port or sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise UsageError(_why(exc, host, port)) from None
    return sockets


def _why(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another `runner serve`?); pick a free one with --port N"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (ports below 1024 need privileges); pick another with --port N"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine; try 127.0.0.1"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}; check --host and --port"
