#!/usr/bin/env python3
"""Small network peers for the VPN tests, run inside a test namespace.

  sink HOST              TCP: listen on HOST (free port), print the port, then
                         "BYTES SHA256" of everything one connection sent
  send HOST PORT         TCP: send stdin to HOST:PORT, then close
  udp-listen HOST        UDP: listen on HOST (free port), print the port, then
                         print each datagram (UTF-8) until "stop" arrives
  raw-udp SRC DST PORT TEXT
                         send one IPv4/UDP datagram with a source address of our
                         choosing (IP_HDRINCL), as a forging host would
"""
import hashlib
import socket
import struct
import sys


def sink(host):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    conn, _ = s.accept()
    digest = hashlib.sha256()
    total = 0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        digest.update(data)
        total += len(data)
    print(total, digest.hexdigest(), flush=True)


def send(host, port):
    s = socket.create_connection((host, int(port)), timeout=60)
    data = sys.stdin.buffer.read()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()


def udp_listen(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    print(s.getsockname()[1], flush=True)
    while True:
        data, _ = s.recvfrom(65536)
        text = data.decode("utf-8", "replace")
        print(text, flush=True)
        if text == "stop":
            return


def raw_udp(src, dst, port, text):
    payload = text.encode()
    udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.sendto(header + udp, (dst, 0))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"sink": sink, "send": send, "udp-listen": udp_listen, "raw-udp": raw_udp}[command](*args)
