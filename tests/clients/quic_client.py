#!/usr/bin/env python3
"""A real QUIC client (aioquic) that sends its Initial packets to HOST:PORT with SNI NAME.

  quic_client.py HOST PORT NAME

No server needs to answer: the monitor names the flow from the client's Initials. The Initial is sent,
then retransmitted twice, 300 ms apart, as a client whose server is slow would. Prints one JSON object:
datagrams sent, the errno of the first send that failed (EPERM when the kernel drops the flow), the local
port and the datagrams of each attempt.
"""
import json
import socket
import ssl
import sys
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection


def main(host, port, name):
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=name)
    config.verify_mode = ssl.CERT_NONE
    conn = QuicConnection(configuration=config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((host, port))
    conn.connect((host, port), now=time.time())
    datagrams = [data for data, _ in conn.datagrams_to_send(now=time.time())]
    # The local port (to find the flow's events and datagrams), and how many datagrams each attempt sends.
    result = {"sent": 0, "errno": None, "port": sock.getsockname()[1], "per_attempt": len(datagrams)}
    for attempt in range(3):
        for data in datagrams:
            try:
                sock.send(data)
                result["sent"] += 1
            except ConnectionRefusedError:
                # No QUIC server there (ICMP port unreachable): the client just tries again.
                continue
            except OSError as e:
                result["errno"] = e.errno
                print(json.dumps(result))
                return
        time.sleep(0.3)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
