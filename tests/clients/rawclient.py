#!/usr/bin/env python3
"""Hand-made clients for the evasion tests: requests split the way an evader would split them.

  rawclient.py connect PROXY_HOST PROXY_PORT TARGET [options]   CONNECT (and a ClientHello in the tunnel)
  rawclient.py tls HOST PORT [options]                          a ClientHello straight to HOST:PORT
  rawclient.py sink PORT LOG                                    count the bytes each connection delivers
  rawclient.py sink PORT LOG --fastopen                         the same, accepting TCP Fast Open (cookies)
  rawclient.py reconnect PROXY_HOST PROXY_PORT FIRST SECOND [--sni NAME]
                                     CONNECT FIRST without credentials, and after the proxy's 407 CONNECT
                                     SECOND with them on the same connection (how proxy authentication goes)
  rawclient.py fastopen HOST PORT HOST[,HOST...]                one connection per Host header, its request sent with
                                     sendto(MSG_FASTOPEN): once the server has handed out a cookie, in the SYN

Options:
  --connect-chunk N   write the CONNECT head N bytes at a time (TCP_NODELAY)
  --sni NAME          SNI of the ClientHello (any case, trailing dot kept as written)
  --chunk N           write the ClientHello N bytes at a time
  --records K         re-frame the ClientHello handshake into K TLS records
  --pad N             put an N-byte padding extension before server_name (pushes the SNI back)
  --split-at N        write the ClientHello in two writes, the first N bytes long, 50 ms apart
Prints one JSON object: which step failed (if any) with errno, the proxy's status, bytes written.
"""
import json
import socket
import ssl
import struct
import sys
import threading
import time


def client_hello(sni):
    """A real ClientHello from this Python's OpenSSL, with SNI `sni` written byte for byte."""
    placeholder = "".join("x" if c != "." else "." for c in sni.lower().rstrip(".")) + ("x" if sni.endswith(".") else "")
    placeholder = placeholder.replace("..", ".x")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=placeholder)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    at = hello.find(placeholder.encode())
    assert at > 0 and len(placeholder) == len(sni), (placeholder, sni)
    return hello[:at] + sni.encode() + hello[at + len(sni):]


def extensions(handshake):
    """Offset of the extensions block (its 2-byte length) in a ClientHello handshake message."""
    p = 4 + 2 + 32
    p += 1 + handshake[p]
    p += 2 + struct.unpack(">H", handshake[p:p + 2])[0]
    p += 1 + handshake[p]
    return p


def pad_before_sni(hello, n):
    hs = bytearray(hello[5:])
    p = extensions(hs)
    ext_len = struct.unpack(">H", hs[p:p + 2])[0]
    padding = struct.pack(">HH", 21, n) + bytes(n)
    body = bytes(hs[p + 2:p + 2 + ext_len])
    hs = hs[:p] + struct.pack(">H", ext_len + len(padding)) + padding + body
    hs[1:4] = struct.pack(">I", len(hs) - 4)[1:]
    return frame(bytes(hs), 1)


def frame(handshake, records):
    size = -(-len(handshake) // records)
    out = b""
    for i in range(0, len(handshake), size):
        part = handshake[i:i + size]
        out += b"\x16\x03\x01" + struct.pack(">H", len(part)) + part
    return out


def send_in(sock, data, chunk, split_at):
    pieces = []
    if split_at:
        pieces = [data[:split_at], data[split_at:]]
    else:
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    written = 0
    for piece in pieces:
        sock.sendall(piece)
        written += len(piece)
        if split_at:
            time.sleep(0.05)
    return written


def opts(args):
    o = {"connect-chunk": 0, "sni": None, "chunk": 0, "records": 1, "pad": 0, "split-at": 0}
    i = 0
    while i < len(args):
        key = args[i][2:]
        val = args[i + 1]
        o[key] = val if key == "sni" else int(val)
        i += 2
    return o


def hello_bytes(o):
    hello = client_hello(o["sni"])
    if o["pad"]:
        hello = pad_before_sni(hello, o["pad"])
    if o["records"] > 1:
        hello = frame(hello[5:], o["records"])
    return hello


def connected(host, port, result):
    """A TCP connection with Nagle off (each write its own segment), its local port in `result`."""
    result["step"] = "connect"
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    result["local_port"] = sock.getsockname()[1]
    return sock


def send_hello(sock, o, result):
    """The ClientHello `o` asks for (if any), then a short wait for the server's first byte."""
    if not o["sni"]:
        return
    hello = hello_bytes(o)
    result["step"] = "send-hello"
    result["written"] += send_in(sock, hello, o["chunk"] or len(hello), o["split-at"])
    result["step"] = "read-hello-reply"
    sock.settimeout(2)
    try:
        sock.recv(1)
    except socket.timeout:
        pass


def run(kind, args):
    result = {"step": None, "errno": None, "status": None, "written": 0}
    sock = None
    try:
        if kind == "connect":
            host, port, target = args[0], int(args[1]), args[2]
            o = opts(args[3:])
            sock = connected(host, port, result)
            head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
            result["step"] = "send-connect"
            result["written"] += send_in(sock, head, o["connect-chunk"] or len(head), 0)
            result["step"] = "read-reply"
            reply = b""
            while b"\r\n\r\n" not in reply:
                more = sock.recv(4096)
                if not more:
                    break
                reply += more
            result["status"] = int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/") else None
        else:
            host, port = args[0], int(args[1])
            o = opts(args[2:])
            sock = connected(host, port, result)
        send_hello(sock, o, result)
        result["step"] = "done"
    except OSError as e:
        result["errno"] = e.errno
        result["error"] = str(e)
    finally:
        if sock:
            sock.close()
    print(json.dumps(result))


def read_head(sock):
    """One HTTP reply head and its Content-Length body; returns the status."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        more = sock.recv(4096)
        if not more:
            raise OSError(0, "the proxy closed the connection")
        reply += more
    head, rest = reply.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        more = sock.recv(4096)
        if not more:
            break
        rest += more
    return int(head.split(b" ")[1])


def reconnect(args):
    host, port, first, second = args[0], int(args[1]), args[2], args[3]
    o = opts(args[4:])
    result = {"step": "connect", "errno": None, "statuses": [], "written": 0}
    sock = None
    try:
        sock = connected(host, port, result)
        result["step"] = "first-connect"
        sock.sendall(f"CONNECT {first} HTTP/1.1\r\nHost: {first}\r\n\r\n".encode())
        result["statuses"].append(read_head(sock))
        result["step"] = "second-connect"
        auth = "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
        sock.sendall(f"CONNECT {second} HTTP/1.1\r\nHost: {second}\r\n{auth}\r\n".encode())
        result["step"] = "second-reply"
        result["statuses"].append(read_head(sock))
        send_hello(sock, o, result)
        result["step"] = "done"
    except OSError as e:
        result["errno"] = e.errno
        result["error"] = str(e)
    finally:
        if sock:
            sock.close()
    print(json.dumps(result))


TCPI_OPT_SYN_DATA = 32


def fastopen(args):
    host, port, host_headers = args[0], int(args[1]), args[2].split(",")
    runs = []
    for host_header in host_headers:
        request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode()
        run = {"errno": None, "syn_data": False, "local_port": None}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Blocking: without a cookie the kernel completes the handshake before sending the request.
            sock.sendto(request, socket.MSG_FASTOPEN, (host, port))
            run["local_port"] = sock.getsockname()[1]
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            run["syn_data"] = bool(info[5] & TCPI_OPT_SYN_DATA)
            sock.settimeout(2)
            try:
                sock.recv(1)
            except socket.timeout:
                pass
        except OSError as e:
            run["errno"] = e.errno
            run["error"] = str(e)
        finally:
            sock.close()
        runs.append(run)
        time.sleep(0.2)
    print(json.dumps({"runs": runs}))


def sink(port, log, fast_open=False):
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fast_open:
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    srv.bind(("::", port))
    srv.listen(64)
    lock = threading.Lock()

    def serve(conn, peer):
        total = 0
        conn.settimeout(10)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                total += len(data)
        except OSError:
            pass
        conn.close()
        with lock, open(log, "a") as f:
            f.write(f"{peer[0]} {peer[1]} {total}\n")

    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(int(sys.argv[2]), sys.argv[3], "--fastopen" in sys.argv[4:])
    elif sys.argv[1] == "reconnect":
        reconnect(sys.argv[2:])
    elif sys.argv[1] == "fastopen":
        fastopen(sys.argv[2:])
    else:
        run(sys.argv[1], sys.argv[2:])
