#!/usr/bin/env python3
"""cipherlink_peer.py - an INDEPENDENT second implementation of Cipherlink v2.

Independence statement: this file was written from three sources only:
  * /work/shared/spec/protocol-v2.md  (the normative wire specification),
  * /work/shared/spec/cli.md          (only to learn how to run the reference CLI),
  * tests/vectors/noise-nnpsk0-25519-aesgcm-sha256.json (the public cacophony
    Noise test vector).
Its author did NOT read the reference implementation (lib/) or the project's own
documentation (docs/). That is the whole point: if this peer interoperates with the
reference client and server, the spec is sufficient to build a compatible one.

Dependencies: Python 3 standard library + the `cryptography` package (X25519 and
AES-256-GCM). The Noise SymmetricState/CipherState/HandshakeState logic, HKDF and the
framing are implemented here from the Noise spec (revision 34) and protocol-v2.md.

Subcommands:
  selftest --vector PATH
  client --server HOST:PORT --key PATH [--connect HOST:PORT] [--rekey-bytes N] [--ping]
  server --listen HOST:PORT --key PATH [--rekey-bytes N]

Exit codes: 0 success, 1 run-time failure (one `cipherlink-peer: error: ...` line on
stderr), 2 usage error (argparse).
"""

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# --------------------------------------------------------------------------------------
# Constants (protocol-v2.md)
# --------------------------------------------------------------------------------------

PROTOCOL_NAME = b"Noise_NNpsk0_25519_AESGCM_SHA256"
PROLOGUE = b"cipherlink/2"
VERSION = 2
HEADER = struct.Struct("!BII")  # version u8, nonce_size u32, data_size u32
HEADER_SIZE = HEADER.size  # 9
TRANSPORT_NONCE_SIZE = 12
MAX_DATA_SIZE = 65535  # the Noise message limit
TAG_SIZE = 16
DH_LEN = 32
HASH_LEN = 32
MAX_DATA_BODY = 65518  # 65535 - 16 (tag) - 1 (type)
MAX_NONCE = 2**64 - 1
DEFAULT_REKEY_BYTES = 1 << 30

T_OPEN, T_OPEN_OK, T_DATA, T_CLOSE, T_PING, T_PONG, T_REKEY, T_ERROR = range(1, 9)
TYPE_NAMES = {
    T_OPEN: "OPEN",
    T_OPEN_OK: "OPEN_OK",
    T_DATA: "DATA",
    T_CLOSE: "CLOSE",
    T_PING: "PING",
    T_PONG: "PONG",
    T_REKEY: "REKEY",
    T_ERROR: "ERROR",
}
ERROR_NAMES = {
    1: "protocol violation",
    2: "refused by the server's policy",
    3: "target unreachable",
    4: "server busy",
    5: "timed out",
    6: "internal error",
}

HANDSHAKE_TIMEOUT = 10.0  # seconds until the handshake and OPEN must be done (server)
IO_TIMEOUT = 60.0  # a bound against hangs; tests never come close


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class PeerError(Exception):
    """A fatal error for the session, reported as one line."""


class Dropped(PeerError):
    """Framing, counter or decryption failure: drop the connection, no reply."""


class Violation(PeerError):
    """A well-authenticated frame whose content breaks the rules (ERROR 1)."""


class Truncated(PeerError):
    """TCP EOF before the peer's CLOSE (or inside a frame)."""


class AuthFailed(PeerError):
    """The handshake could not be completed with this key."""


class RemoteError(PeerError):
    """The peer sent an ERROR frame."""

    def __init__(self, code, message):
        self.code = code
        self.remote_message = message
        name = ERROR_NAMES.get(code, "unknown code")
        super().__init__(f"server sent ERROR {code} ({name}): {message}")


def log(message):
    sys.stderr.write(f"cipherlink-peer: {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------
# Noise primitives: 25519, AESGCM, SHA256 (Noise spec rev. 34, sections 4, 5, 12)
# --------------------------------------------------------------------------------------


def sha256(data):
    return hashlib.sha256(data).digest()


def hmac_sha256(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def noise_hkdf(chaining_key, input_key_material, num_outputs):
    """HKDF as defined in Noise section 4.3 (HMAC-SHA256, 2 or 3 outputs)."""
    temp_key = hmac_sha256(chaining_key, input_key_material)
    output1 = hmac_sha256(temp_key, b"\x01")
    output2 = hmac_sha256(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = hmac_sha256(temp_key, output2 + b"\x03")
    return output1, output2, output3


def aesgcm_nonce(n):
    """AESGCM nonce per Noise section 12.3: 4 zero bytes then n as u64 big-endian."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "big")


def public_bytes(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class KeyPair:
    def __init__(self, private_bytes=None):
        if private_bytes is None:
            self.private = X25519PrivateKey.generate()
        else:
            self.private = X25519PrivateKey.from_private_bytes(private_bytes)
        self.public = public_bytes(self.private.public_key())

    def dh(self, remote_public):
        # cryptography rejects an all-zero shared secret (low-order point) with ValueError.
        return self.private.exchange(X25519PublicKey.from_public_bytes(remote_public))


class CipherState:
    """Noise section 5.1."""

    def __init__(self, key=None):
        self.n = 0
        self._set_key(key)

    def _set_key(self, key):
        self.k = key
        self._aead = AESGCM(key) if key is not None else None

    def has_key(self):
        return self.k is not None

    def encrypt_with_ad(self, ad, plaintext):
        if self.k is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise PeerError("nonce space exhausted")
        ciphertext = self._aead.encrypt(aesgcm_nonce(self.n), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad, ciphertext):
        """Raises InvalidTag on failure; n is only advanced on success."""
        if self.k is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise PeerError("nonce space exhausted")
        plaintext = self._aead.decrypt(aesgcm_nonce(self.n), ciphertext, ad)
        self.n += 1
        return plaintext

    def rekey(self):
        """REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, empty ad, 32 zero bytes); n kept."""
        new_key = self._aead.encrypt(aesgcm_nonce(MAX_NONCE), b"\x00" * 32, b"")[:32]
        self._set_key(new_key)


class SymmetricState:
    """Noise section 5.2."""

    def __init__(self, protocol_name):
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name + b"\x00" * (HASH_LEN - len(protocol_name))
        else:
            self.h = sha256(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material):
        self.ck, temp_k = noise_hkdf(self.ck, input_key_material, 2)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data):
        self.h = sha256(self.h + data)

    def mix_key_and_hash(self, input_key_material):
        self.ck, temp_h, temp_k = noise_hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:32])

    def encrypt_and_hash(self, plaintext):
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext):
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self):
        temp_k1, temp_k2 = noise_hkdf(self.ck, b"", 2)
        return CipherState(temp_k1[:32]), CipherState(temp_k2[:32])


class HandshakeNNpsk0:
    """HandshakeState for NNpsk0 (Noise sections 5.3, 7.5 and 9):

        -> psk, e
        <- e, ee

    In a PSK handshake every `e` token is followed by MixKey(e.public_key).
    """

    def __init__(self, initiator, prologue, psk, ephemeral=None):
        if len(psk) != 32:
            raise ValueError("psk must be 32 bytes")
        self.initiator = initiator
        self.psk = psk
        self.ss = SymmetricState(PROTOCOL_NAME)
        self.ss.mix_hash(prologue)
        self._ephemeral_private = ephemeral  # injected for test vectors
        self.e = None
        self.re = None
        self.handshake_hash = None

    def _generate_ephemeral(self):
        self.e = KeyPair(self._ephemeral_private)

    def _token_e_write(self):
        self._generate_ephemeral()
        self.ss.mix_hash(self.e.public)
        self.ss.mix_key(self.e.public)  # psk modifier
        return self.e.public

    def _token_e_read(self, message):
        if len(message) < DH_LEN:
            raise ValueError("handshake message too short")
        self.re = message[:DH_LEN]
        self.ss.mix_hash(self.re)
        self.ss.mix_key(self.re)  # psk modifier
        return message[DH_LEN:]

    # message 1 (initiator -> responder): psk, e
    def write_message_1(self, payload):
        assert self.initiator
        self.ss.mix_key_and_hash(self.psk)
        out = self._token_e_write()
        return out + self.ss.encrypt_and_hash(payload)

    def read_message_1(self, message):
        assert not self.initiator
        if len(message) < DH_LEN + TAG_SIZE:
            raise ValueError("message 1 is too short")
        self.ss.mix_key_and_hash(self.psk)
        rest = self._token_e_read(message)
        return self.ss.decrypt_and_hash(rest)

    # message 2 (responder -> initiator): e, ee
    def write_message_2(self, payload):
        assert not self.initiator
        out = self._token_e_write()
        self.ss.mix_key(self.e.dh(self.re))
        out += self.ss.encrypt_and_hash(payload)
        self.handshake_hash = self.ss.h
        return out

    def read_message_2(self, message):
        assert self.initiator
        if len(message) < DH_LEN + TAG_SIZE:
            raise ValueError("message 2 is too short")
        rest = self._token_e_read(message)
        self.ss.mix_key(self.e.dh(self.re))
        payload = self.ss.decrypt_and_hash(rest)
        self.handshake_hash = self.ss.h
        return payload

    def split(self):
        """(c1, c2): c1 encrypts initiator -> responder, c2 responder -> initiator."""
        return self.ss.split()


# --------------------------------------------------------------------------------------
# Framing (protocol-v2.md section 1)
# --------------------------------------------------------------------------------------


def check_header(header, expected_nonce_size):
    """Decides on a frame from its 9 header bytes alone; raises Dropped."""
    version, nonce_size, data_size = HEADER.unpack(header)
    if version != VERSION:
        if version == 1:
            raise Dropped(
                "received a version-1 packet: that is the legacy Python prototype's PyNaCl "
                "SecretBox format, which Cipherlink v2 does not speak"
            )
        raise Dropped(f"unsupported frame version {version} (expected {VERSION})")
    if nonce_size != expected_nonce_size:
        raise Dropped(f"nonce_size {nonce_size} where {expected_nonce_size} is expected")
    if data_size > MAX_DATA_SIZE:
        raise Dropped(f"data_size {data_size} exceeds {MAX_DATA_SIZE}")
    if data_size < TAG_SIZE:
        raise Dropped(f"data_size {data_size} is too small to carry an AEAD tag")
    return data_size


def read_exact(reader, n, what):
    """Reads n bytes; returns b"" on EOF before the first byte, raises Truncated inside."""
    data = reader.read(n)
    if data is None:
        data = b""
    if 0 < len(data) < n:
        raise Truncated(f"connection ended in the middle of {what}")
    return data


def handshake_frame(message):
    return HEADER.pack(VERSION, 0, len(message)) + message


def read_handshake_frame(reader):
    """Returns the data of a handshake frame or None on EOF before it."""
    header = read_exact(reader, HEADER_SIZE, "a frame header")
    if not header:
        return None
    data_size = check_header(header, 0)
    data = read_exact(reader, data_size, "a handshake frame")
    if len(data) != data_size:
        raise Truncated("connection ended in the middle of a handshake frame")
    return data


class Channel:
    """The transport phase of one connection (protocol-v2.md section 3)."""

    def __init__(self, sock, reader, send_cs, recv_cs, rekey_bytes):
        self.sock = sock
        self.reader = reader
        self.send_cs = send_cs
        self.recv_cs = recv_cs
        self.rekey_bytes = rekey_bytes
        self.lock = threading.Lock()
        self.sent_under_key = 0
        self.rekeys_sent = 0
        self.rekeys_received = 0

    def _send_plaintext(self, plaintext):
        n = self.send_cs.n
        header = HEADER.pack(VERSION, TRANSPORT_NONCE_SIZE, len(plaintext) + TAG_SIZE)
        ciphertext = self.send_cs.encrypt_with_ad(header, plaintext)
        self.sock.sendall(header + aesgcm_nonce(n) + ciphertext)

    def send(self, frame_type, body=b""):
        plaintext = bytes([frame_type]) + body
        with self.lock:
            # Rekey before this key would carry more than rekey_bytes of plaintext (the
            # REKEY frame itself included); a single frame larger than the limit still
            # goes out under a fresh key.
            if (
                frame_type != T_REKEY
                and self.sent_under_key > 0
                and self.sent_under_key + 1 + len(plaintext) > self.rekey_bytes
            ):
                self._send_plaintext(bytes([T_REKEY]))
                self.send_cs.rekey()  # right after sending it
                self.rekeys_sent += 1
                self.sent_under_key = 0
            self._send_plaintext(plaintext)
            self.sent_under_key += len(plaintext)

    def send_error(self, code, message):
        try:
            self.send(T_ERROR, bytes([code]) + message.encode("utf-8"))
        except OSError:
            pass

    def recv(self):
        """Next (type, body); None on EOF at a frame boundary. REKEY is applied here."""
        while True:
            header = read_exact(self.reader, HEADER_SIZE, "a frame header")
            if not header:
                return None
            data_size = check_header(header, TRANSPORT_NONCE_SIZE)
            nonce = read_exact(self.reader, TRANSPORT_NONCE_SIZE, "a frame")
            data = read_exact(self.reader, data_size, "a frame") if nonce else b""
            if len(nonce) != TRANSPORT_NONCE_SIZE or len(data) != data_size:
                raise Truncated("connection ended in the middle of a frame")
            expected = aesgcm_nonce(self.recv_cs.n)
            if nonce != expected:
                raise Dropped(
                    f"frame nonce {nonce.hex()} is not the expected counter {expected.hex()}"
                )
            try:
                plaintext = self.recv_cs.decrypt_with_ad(header, data)
            except InvalidTag:
                raise Dropped(f"transport frame {self.recv_cs.n} failed to decrypt") from None
            if not plaintext:
                raise Violation("transport frame with an empty plaintext (no type byte)")
            frame_type, body = plaintext[0], plaintext[1:]
            if frame_type == T_REKEY:
                if body:
                    raise Violation("REKEY with a non-empty body")
                self.recv_cs.rekey()  # right after decrypting it
                self.rekeys_received += 1
                continue
            return frame_type, body


def check_body(frame_type, body):
    """Body rules of the type table; raises Violation."""
    if frame_type == T_DATA and not 1 <= len(body) <= MAX_DATA_BODY:
        raise Violation(f"DATA body of {len(body)} bytes (must be 1 to {MAX_DATA_BODY})")
    if frame_type in (T_OPEN_OK, T_CLOSE) and body:
        raise Violation(f"{TYPE_NAMES[frame_type]} with a non-empty body")
    if frame_type in (T_PING, T_PONG) and len(body) > 8:
        raise Violation(f"{TYPE_NAMES[frame_type]} body of {len(body)} bytes (at most 8)")
    if frame_type == T_ERROR and not body:
        raise Violation("ERROR without a code")
    if frame_type not in TYPE_NAMES:
        raise Violation(f"unknown frame type {frame_type}")


def parse_error_body(body):
    return body[0], body[1:].decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------
# Targets (SOCKS5 address encoding)
# --------------------------------------------------------------------------------------


def split_host_port(text):
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"malformed address {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"malformed address {text!r} (expected HOST:PORT)")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"malformed address {text!r} (expected HOST:PORT)")
    return host, int(port_text)


def encode_target(host, port):
    """`0x01 ATYP ADDR PORT` with SOCKS5 encoding."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.version == 4:
        addr = b"\x01" + ip.packed
    elif ip is not None:
        addr = b"\x04" + ip.packed
    else:
        name = host.encode("idna")
        if not 1 <= len(name) <= 255:
            raise ValueError(f"domain name {host!r} is not 1 to 255 bytes")
        addr = b"\x03" + bytes([len(name)]) + name
    return b"\x01" + addr + struct.pack("!H", port)


def decode_target(body):
    """Parses an OPEN body; returns None for 0x00 or (host, port); raises Violation."""
    if body == b"\x00":
        return None
    if len(body) < 2 or body[0] != 1:
        raise Violation("malformed OPEN target")
    atyp, rest = body[1], body[2:]
    if atyp == 1 and len(rest) == 4 + 2:
        host = str(ipaddress.IPv4Address(rest[:4]))
    elif atyp == 4 and len(rest) == 16 + 2:
        host = str(ipaddress.IPv6Address(rest[:16]))
    elif atyp == 3 and rest and len(rest) == 1 + rest[0] + 2 and rest[0] > 0:
        host = rest[1 : 1 + rest[0]].decode("ascii", errors="replace")
    else:
        raise Violation("malformed OPEN target")
    return host, struct.unpack("!H", rest[-2:])[0]


# --------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------


def finish(sock, drain_timeout=2.0):
    """Ends a connection without a RST: FIN first, drain what the peer still sends."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(drain_timeout)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def client_session(sock, psk, open_body, source, sink, rekey_bytes, ping):
    """One client session; returns a stats dict, raises PeerError subclasses."""
    reader = sock.makefile("rb")
    handshake = HandshakeNNpsk0(True, PROLOGUE, psk)
    sock.sendall(handshake_frame(handshake.write_message_1(b"")))
    try:
        message2 = read_handshake_frame(reader)
    except Truncated:
        message2 = None
    if message2 is None:
        raise AuthFailed(
            "authentication failed: the server closed the connection during the handshake "
            "(it does not hold the same key?)"
        )
    try:
        handshake.read_message_2(message2)  # payload ignored
    except (InvalidTag, ValueError):
        raise AuthFailed(
            "authentication failed: the server does not hold the same key"
        ) from None
    send_cs, recv_cs = handshake.split()
    channel = Channel(sock, reader, send_cs, recv_cs, rekey_bytes)

    channel.send(T_OPEN, open_body)
    ping_body = None
    if ping:
        ping_body = os.urandom(8)
        channel.send(T_PING, ping_body)

    stats = {"sent": 0, "received": 0}
    writer_error = []

    def pump():
        try:
            while True:
                chunk = source.read(MAX_DATA_BODY)
                if not chunk:
                    break
                channel.send(T_DATA, chunk)
                stats["sent"] += len(chunk)
            channel.send(T_CLOSE)
        except Exception as error:  # reported by the main thread
            writer_error.append(error)

    writer = threading.Thread(target=pump, daemon=True)
    writer.start()

    opened = False
    while True:
        frame = channel.recv()
        if frame is None:
            raise Truncated(
                "connection truncated: the server closed the TCP connection before its CLOSE"
            )
        frame_type, body = frame
        check_body(frame_type, body)
        if frame_type == T_ERROR:
            raise RemoteError(*parse_error_body(body))
        if frame_type == T_OPEN_OK:
            if opened:
                raise Violation("a second OPEN_OK")
            opened = True
        elif frame_type == T_DATA:
            if not opened:
                raise Violation("DATA before OPEN_OK")
            sink.write(body)
            stats["received"] += len(body)
        elif frame_type == T_CLOSE:
            if not opened:
                raise Violation("CLOSE before OPEN_OK")
            break
        elif frame_type == T_PING:
            channel.send(T_PONG, body)
        elif frame_type == T_PONG:
            if ping_body is None or body != ping_body:
                raise Violation(
                    f"PONG body {body.hex()} does not echo our PING "
                    f"{ping_body.hex() if ping_body else '(none sent)'}"
                )
            ping_body = None
            stats["pong"] = True
        else:
            raise Violation(f"unexpected {TYPE_NAMES[frame_type]} from the server")

    # The server's CLOSE arrived; we end cleanly once our own CLOSE is out, too.
    writer.join(IO_TIMEOUT)
    if writer.is_alive():
        raise PeerError("timed out sending the rest of the input after the server's CLOSE")
    if writer_error:
        raise PeerError(f"sending failed: {writer_error[0]}")
    if ping_body is not None:
        raise PeerError("the server answered CLOSE without a PONG for our PING")
    stats["rekeys_sent"] = channel.rekeys_sent
    stats["rekeys_received"] = channel.rekeys_received
    return stats


def server_session(sock, peer, psk, rekey_bytes):
    """One echo session on an accepted connection (closes the socket)."""
    channel = None
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        reader = sock.makefile("rb")
        handshake = HandshakeNNpsk0(False, PROLOGUE, psk)
        try:
            message1 = read_handshake_frame(reader)
            if message1 is None:
                log(f"{peer}: closed before the handshake")
                return
            handshake.read_message_1(message1)  # payload ignored
        except (InvalidTag, ValueError, PeerError, OSError) as error:
            reason = "cannot decrypt message 1 (wrong key?)" if isinstance(error, InvalidTag) else error
            log(f"{peer}: handshake failed: {reason}")
            return  # closes without sending anything
        sock.sendall(handshake_frame(handshake.write_message_2(b"")))
        recv_cs, send_cs = handshake.split()  # c1: client -> server, c2: server -> client
        channel = Channel(sock, reader, send_cs, recv_cs, rekey_bytes)

        # Nothing is acted on before the first transport frame has decrypted.
        first = channel.recv()
        if first is None:
            log(f"{peer}: closed after the handshake without OPEN")
            return
        frame_type, body = first
        if frame_type != T_OPEN:
            raise Violation(f"first transport frame is {TYPE_NAMES.get(frame_type, frame_type)}, not OPEN")
        target = decode_target(body)
        if target is not None:
            log(f"{peer}: refused OPEN to {target[0]}:{target[1]} (no rule allows it)")
            channel.send_error(2, f"target {target[0]}:{target[1]} is not allowed by this server")
            return
        sock.settimeout(IO_TIMEOUT)
        channel.send(T_OPEN_OK)
        log(f"{peer}: session opened (echo)")

        echoed = 0
        while True:
            frame = channel.recv()
            if frame is None:
                raise Truncated("connection truncated: EOF before the client's CLOSE")
            frame_type, body = frame
            check_body(frame_type, body)
            if frame_type == T_DATA:
                channel.send(T_DATA, body)
                echoed += len(body)
            elif frame_type == T_CLOSE:
                channel.send(T_CLOSE)
                break
            elif frame_type == T_PING:
                channel.send(T_PONG, body)
            elif frame_type == T_PONG:
                pass
            elif frame_type == T_ERROR:
                code, message = parse_error_body(body)
                log(f"{peer}: client sent ERROR {code}: {message}")
                return
            else:
                raise Violation(f"unexpected {TYPE_NAMES[frame_type]} from the client")
        log(
            f"{peer}: session closed cleanly: echoed {echoed} bytes, "
            f"rekeys sent {channel.rekeys_sent}, received {channel.rekeys_received}"
        )
    except Violation as error:
        log(f"{peer}: protocol violation: {error}")
        if channel is not None:
            channel.send_error(1, str(error))
    except (PeerError, OSError) as error:
        log(f"{peer}: session aborted: {error}")
    except Exception as error:  # never kill the server for one connection
        log(f"{peer}: internal error: {error!r}")
    finally:
        finish(sock)


# --------------------------------------------------------------------------------------
# Keys (protocol-v2.md section 4)
# --------------------------------------------------------------------------------------

KEY_FORMATS = "32 raw bytes, 64 hex characters, or the base64 of 32 bytes, optionally followed by a newline"


def parse_key(contents):
    if len(contents) == 32:
        return contents
    stripped = contents
    if stripped.endswith(b"\r\n"):
        stripped = stripped[:-2]
    elif stripped.endswith(b"\n"):
        stripped = stripped[:-1]
    if len(stripped) == 32:
        return stripped
    if len(stripped) == 64:
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        decoded = base64.b64decode(stripped, validate=True)
        if len(decoded) == 32:
            return decoded
    except (binascii.Error, ValueError):
        pass
    raise PeerError(f"key is malformed; accepted formats: {KEY_FORMATS}")


def load_key(path):
    try:
        with open(path, "rb") as handle:
            contents = handle.read()
    except OSError as error:
        raise PeerError(f"cannot read key file {path}: {error.strerror}") from None
    try:
        return parse_key(contents)
    except PeerError as error:
        raise PeerError(f"key file {path}: {error}") from None


# --------------------------------------------------------------------------------------
# selftest
# --------------------------------------------------------------------------------------


class Checker:
    def __init__(self):
        self.failures = 0
        self.passed = 0

    def check(self, condition, what):
        if condition:
            self.passed += 1
        else:
            self.failures += 1
            log(f"selftest FAIL: {what}")


def selftest_vector(checker, vector):
    h = bytes.fromhex
    prologue, psk = h(vector["init_prologue"]), h(vector["init_psks"][0])
    initiator = HandshakeNNpsk0(True, prologue, psk, h(vector["init_ephemeral"]))
    responder = HandshakeNNpsk0(
        False, h(vector["resp_prologue"]), h(vector["resp_psks"][0]), h(vector["resp_ephemeral"])
    )
    messages = vector["messages"]

    m0 = initiator.write_message_1(h(messages[0]["payload"]))
    checker.check(m0.hex() == messages[0]["ciphertext"], "message 1 ciphertext")
    checker.check(responder.read_message_1(m0) == h(messages[0]["payload"]), "message 1 payload")

    m1 = responder.write_message_2(h(messages[1]["payload"]))
    checker.check(m1.hex() == messages[1]["ciphertext"], "message 2 ciphertext")
    checker.check(initiator.read_message_2(m1) == h(messages[1]["payload"]), "message 2 payload")

    expected_hash = vector["handshake_hash"]
    checker.check(initiator.handshake_hash.hex() == expected_hash, "initiator handshake hash")
    checker.check(responder.handshake_hash.hex() == expected_hash, "responder handshake hash")

    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    for index, message in enumerate(messages[2:], start=2):
        payload, ciphertext = h(message["payload"]), message["ciphertext"]
        sender, receiver = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
        produced = sender.encrypt_with_ad(b"", payload)
        checker.check(produced.hex() == ciphertext, f"transport message {index} ciphertext")
        checker.check(
            receiver.decrypt_with_ad(b"", bytes.fromhex(ciphertext)) == payload,
            f"transport message {index} payload",
        )
    return len(messages)


def selftest_extras(checker):
    # REKEY keeps both ends in step and keeps n.
    key = os.urandom(32)
    a, b = CipherState(key), CipherState(key)
    b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"x"))
    a.rekey()
    b.rekey()
    expected = AESGCM(key).encrypt(b"\x00" * 4 + b"\xff" * 8, bytes(32), b"")[:32]
    checker.check(a.k == expected and a.n == 1, "REKEY derivation, counter kept")
    checker.check(b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"y")) == b"y", "REKEY in step")

    # Wrong psk: the responder cannot decrypt message 1.
    client = HandshakeNNpsk0(True, PROLOGUE, bytes(32))
    server = HandshakeNNpsk0(False, PROLOGUE, b"\x01" * 32)
    try:
        server.read_message_1(client.write_message_1(b""))
        checker.check(False, "wrong psk must fail message 1")
    except InvalidTag:
        checker.check(True, "")

    # Header checks.
    for header, nonce_size in (
        (HEADER.pack(1, 24, 40), 0),
        (HEADER.pack(2, 12, 48), 0),
        (HEADER.pack(2, 12, 65536), 12),
        (HEADER.pack(2, 12, 15), 12),
    ):
        try:
            check_header(header, nonce_size)
            checker.check(False, f"header {header.hex()} must be dropped")
        except Dropped:
            checker.check(True, "")
    checker.check(check_header(HEADER.pack(2, 12, 65535), 12) == 65535, "max frame accepted")

    # Key formats.
    key = os.urandom(32)
    for form in (key, key.hex().encode(), key.hex().encode() + b"\n", base64.b64encode(key) + b"\n"):
        checker.check(parse_key(form) == key, "key format")
    try:
        parse_key(b"short")
        checker.check(False, "malformed key must be rejected")
    except PeerError:
        checker.check(True, "")

    # Targets.
    checker.check(encode_target("127.0.0.1", 9) == bytes.fromhex("0101" + "7f000001" + "0009"), "IPv4 target")
    checker.check(decode_target(encode_target("::1", 22)) == ("::1", 22), "IPv6 target")
    checker.check(decode_target(encode_target("example.com", 443)) == ("example.com", 443), "domain target")

    # A whole session over a socket pair, both ends from this file, with rekeys and a PING.
    psk = os.urandom(32)
    data = os.urandom(300_000)
    client_sock, server_sock = socket.socketpair()
    thread = threading.Thread(target=server_session, args=(server_sock, "selftest", psk, 5000))
    thread.start()
    sink = io.BytesIO()
    try:
        stats = client_session(client_sock, psk, b"\x00", io.BytesIO(data), sink, 3000, True)
    finally:
        client_sock.close()
        thread.join()
    checker.check(sink.getvalue() == data, "loopback echo")
    checker.check(stats["rekeys_sent"] > 0 and stats["rekeys_received"] > 0, "loopback rekeys")
    checker.check(stats.get("pong") is True, "loopback PONG")


def cmd_selftest(args):
    try:
        with open(args.vector, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as error:
        raise PeerError(f"cannot load vector file {args.vector}: {error}") from None
    vectors = [v for v in document.get("vectors", []) if v.get("protocol_name") == PROTOCOL_NAME.decode()]
    if not vectors:
        raise PeerError(f"no {PROTOCOL_NAME.decode()} vector in {args.vector}")
    checker = Checker()
    for vector in vectors:
        count = selftest_vector(checker, vector)
    selftest_extras(checker)
    if checker.failures:
        raise PeerError(f"selftest failed: {checker.failures} check(s) failed")
    print(
        f"selftest ok: {len(vectors)} vector(s), {count} messages and the handshake hash "
        f"reproduced byte for byte; {checker.passed} checks passed"
    )
    return 0


# --------------------------------------------------------------------------------------
# client / server commands
# --------------------------------------------------------------------------------------


def connect(address):
    host, port = split_host_port(address)
    try:
        sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    except OSError as error:
        raise PeerError(f"cannot connect to the server at {address}: {error}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def cmd_client(args):
    psk = load_key(args.key)
    if args.connect:
        try:
            open_body = encode_target(*split_host_port(args.connect))
        except ValueError as error:
            raise PeerError(str(error)) from None
    else:
        open_body = b"\x00"
    sock = connect(args.server)
    sink = sys.stdout.buffer
    try:
        stats = client_session(sock, psk, open_body, sys.stdin.buffer, sink, args.rekey_bytes, args.ping)
    except OSError as error:
        raise PeerError(f"connection failed: {error}") from None
    finally:
        sink.flush()
        sock.close()
    log(
        f"session closed cleanly: sent {stats['sent']} bytes, received {stats['received']} bytes, "
        f"rekeys sent {stats['rekeys_sent']}, received {stats['rekeys_received']}"
        + (", PONG ok" if stats.get("pong") else "")
    )
    return 0


def cmd_server(args):
    psk = load_key(args.key)
    host, port = split_host_port(args.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    bound = listener.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]

    def stop(signum, _frame):
        log(f"stopped (signal {signum})")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"listening on {shown}:{bound[1]}")
    while True:
        conn, address = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = f"{address[0]}:{address[1]}"
        threading.Thread(
            target=server_session, args=(conn, peer, psk, args.rekey_bytes), daemon=True
        ).start()


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="cipherlink_peer.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    selftest = commands.add_parser("selftest", help="check against the Noise test vector")
    selftest.add_argument("--vector", required=True)

    client = commands.add_parser("client", help="one session: stdin -> tunnel -> stdout")
    client.add_argument("--server", required=True)
    client.add_argument("--key", required=True)
    client.add_argument("--connect")
    client.add_argument("--rekey-bytes", type=positive_int, default=DEFAULT_REKEY_BYTES)
    client.add_argument("--ping", action="store_true")

    server = commands.add_parser("server", help="echo server")
    server.add_argument("--listen", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--rekey-bytes", type=positive_int, default=DEFAULT_REKEY_BYTES)

    args = parser.parse_args(argv)
    handler = {"selftest": cmd_selftest, "client": cmd_client, "server": cmd_server}[args.command]
    try:
        code = handler(args)
    except PeerError as error:
        code = 1
        log(f"error: {error}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a writer thread blocked on stdin


if __name__ == "__main__":
    main()
