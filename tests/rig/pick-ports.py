"""Prints N distinct free 127.0.0.1 ports below the kernel's ephemeral range.

A port from that range (net.ipv4.ip_local_port_range, what binding port 0
gives) can be taken by any outgoing connection or port-0 listener on the
machine while a stopped server is down, and the rig restarts servers on the
same port (the Cassandra fault tests, the oidc-provider's stop / start and
key rotation): the fault tests failed that way when other tests had many
connections open. Each candidate is checked by binding it; all sockets are
held until all are chosen, so no two coincide.

    python3 tests/rig/pick-ports.py [N]    (default 1)
"""

import random
import socket
import sys

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    ephemeral_low = 32768
low, high = 10000, max(ephemeral_low - 1, 10001)
socks = []
for _ in range(1000):
    if len(socks) == count:
        break
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", random.randint(low, high)))
    except OSError:
        s.close()
        continue
    socks.append(s)
if len(socks) < count:
    raise SystemExit(f"no {count} free ports in {low}-{high} on 127.0.0.1")
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
