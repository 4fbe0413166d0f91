"""A python-zeroconf responder for tests, run inside a test's namespace:

    python -m tests.zeroconf_responder ADDRESS 'Instance|_http._tcp|80|printer.local|192.0.2.20' ...

registers each service (and so its host's address record) on the interface
that has ADDRESS, prints "ready", and serves until it is terminated.
"""
from __future__ import annotations

import signal
import socket
import sys

from zeroconf import ServiceInfo, Zeroconf


def main(argv: list[str]) -> int:
    address, specs = argv[0], argv[1:]
    zc = Zeroconf(interfaces=[address])
    for spec in specs:
        name, kind, port, host, host_address = spec.split("|")
        service_type = f"{kind}.local."
        zc.register_service(ServiceInfo(service_type, f"{name}.{service_type}", port=int(port),
                                        server=f"{host}.", addresses=[socket.inet_aton(host_address)]))
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    zc.close()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main(sys.argv[1:]))
