"""A small MQTT 3.1.1 client for MicroPython boards (and anything with sockets).

It serves the same link contract as the paho adapter, so agent.runtime runs
unchanged on a board:
    link.connected, link.set_will(topic, payload, qos, retain),
    link.set_callbacks(on_message, on_connect, on_disconnect),
    link.subscribe(topic, qos), link.publish(topic, payload, qos, retain),
    link.poll(timeout_ms), link.start(), link.close()
What it does: CONNECT with a last will and credentials, SUBSCRIBE (re-sent on
every reconnect), PUBLISH at QoS 0 and 1 (unacknowledged QoS 1 messages are
re-sent with DUP after a reconnect, bounded), PUBACK for inbound QoS 1 only
after the message callback returned (so a command is acknowledged to the
broker after its store commit), keepalive pings, and reconnects with
exponential backoff and jitter. No QoS 2: fleetstage never uses it.

Never: block longer than poll's timeout once connected (a connect attempt may
take up to CONNECT_TIMEOUT_S), raise out of poll(), or trust a length field:
a malformed packet from the broker drops the connection and reconnects.
A PUBLISH larger than MAX_PACKET is not malformed, only too big for a
board's heap: the client reads its topic and packet id, discards the rest as
it arrives (never buffering it), hands the callback `payload=None` (the
runtime acks it `malformed`), PUBACKs it so the broker stops redelivering,
and keeps the link. Dropping the link instead would cut the board off: the
broker would resend the message on every reconnect, forever.
Unlike micropython-lib's umqtt.simple it does not validate wire data with
`assert`, and it never blocks inside a read.
"""
import select
import socket
import struct

from firmware_shim.crypto import jitter_bytes
from firmware_shim.machine import monotonic_ms

_ssl = False  # the ssl module, imported by the first mqtts:// link (None: the port has none)

CONNECT_TIMEOUT_S = 5
# The largest packet held in RAM. A signed command is at most 4 KiB of body
# plus 16 bytes of MAC per device it names (bounded by the addressing); a
# bigger PUBLISH is skipped (see above).
MAX_PACKET = 32 * 1024
# One read from the socket, into the link's own buffer (a command arrives in a few reads).
READ_CHUNK = 512
MAX_TOPIC = 1024  # an oversized PUBLISH whose topic is longer than this is malformed
MAX_INFLIGHT = 64
EAGAIN = 11


class MicroMqttError(Exception):
    pass


class MicroMqttNotConnected(MicroMqttError):
    pass


def _str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack(">H", len(b)) + b


def _read_some(sock, buf):
    """Read what the socket has (at most len(buf) bytes) into buf -> the count, None if
    nothing yet. CPython's recv_into returns what is there; MicroPython's readinto waits
    for the whole buffer on a blocking socket, so it reads non-blocking. MicroPython's
    SSLSocket has a recv_into too, but it waits for the whole buffer as readinto does
    (mqtts:// stalled until the connect timeout): readinto first, where there is one."""
    if not hasattr(sock, "readinto"):  # CPython
        return sock.recv_into(buf)
    sock.setblocking(False)
    try:
        return sock.readinto(buf)
    finally:
        sock.setblocking(True)


def _has_filter(filters, entry):
    """Is `entry` (an encoded topic filter and its QoS) one of the encoded `filters`?"""
    i = 0
    while i < len(filters):
        end = i + 3 + (filters[i] << 8 | filters[i + 1])
        if filters[i:end] == entry:
            return True
        i = end
    return False


def _remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def _packet(first, body, length=None):
    """The packet: its type byte, remaining length and body. With `length` (the whole
    body's), `body` is only its first part and the caller adds the rest."""
    return bytes((first,)) + _remaining_length(len(body) if length is None else length) + body


def parse_packets(buf, max_packet=MAX_PACKET):
    """Split complete packets off `buf` -> (packets, rest, skip).

    packets: (type_byte, body) for each whole packet, and (type_byte, head,
    length) for a PUBLISH longer than max_packet: head holds its topic and
    packet id, and `skip` more bytes of it are still to come and to be
    discarded. Raises MicroMqttError for a length field that is malformed, or
    any other packet that is too large.
    """
    out = []
    pos = 0
    n = len(buf)
    while pos + 2 <= n:
        first = buf[pos]
        length = 0
        mult = 1
        i = pos + 1
        while True:
            if i >= n:
                return out, buf[pos:], 0
            b = buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            mult *= 128
            if mult > 128 ** 3:
                raise MicroMqttError("malformed remaining length")
        if length > max_packet:
            if first & 0xF0 != 0x30:
                raise MicroMqttError("packet of %d bytes exceeds %d" % (length, max_packet))
            if i + 2 > n:
                return out, buf[pos:], 0
            head = 2 + ((buf[i] << 8) | buf[i + 1]) + (2 if first & 0x06 else 0)
            if head > MAX_TOPIC + 4 or head > length:
                raise MicroMqttError("oversized PUBLISH with a topic of %d bytes" % head)
            if i + head > n:
                return out, buf[pos:], 0
            out.append((first, bytes(buf[i:i + head]), length))
            if i + length > n:
                return out, b"", i + length - n
            pos = i + length
            continue
        if i + length > n:
            return out, buf[pos:], 0
        out.append((first, bytes(buf[i:i + length])))
        pos = i + length
    return out, buf[pos:], 0


class MicroTlsUnsupported(MicroMqttError):
    """mqtts:// cannot be verified here (no ssl, no SSLContext, or no CA): refused."""


def ca_der(ca):
    """One CA certificate, PEM (str/bytes) or DER, as DER bytes.

    DER, because MicroPython's mbedtls refuses PEM passed as cadata. One
    certificate only: a DER cadata holds one, and a bundle whose later
    certificates were silently dropped would be a surprise.
    """
    if isinstance(ca, str):
        ca = ca.encode()
    ca = bytes(ca)
    if not ca.lstrip().startswith(b"-----BEGIN"):
        return ca
    import binascii

    blocks, body, inside = [], [], False
    for line in ca.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN CERTIFICATE"):
            inside, body = True, []
        elif line.startswith(b"-----END CERTIFICATE"):
            inside = False
            blocks.append(b"".join(body))
        elif inside and line:
            body.append(line)
    if len(blocks) != 1:
        raise MicroTlsUnsupported("tls.ca must hold exactly one CA certificate on a board "
                                  "(found %d)" % len(blocks))
    try:
        return binascii.a2b_base64(blocks[0])
    except ValueError:
        raise MicroTlsUnsupported("tls.ca is not valid PEM") from None


def tls_context(ca):
    """An SSLContext that verifies the broker's certificate against `ca`.

    ca: the CA certificate(s), PEM (str or bytes) or DER (bytes). A port that
    cannot verify a server (no ssl module, no SSLContext, no
    load_verify_locations) raises MicroTlsUnsupported: an unverified mqtts://
    would let anyone on the path pose as the broker, so it is never used.
    """
    global _ssl
    if _ssl is False:  # on first use: a board on mqtt:// never holds the module (about 1 KB)
        try:
            import ssl as _ssl
        except ImportError:  # boards built without TLS
            _ssl = None
    if _ssl is None or not hasattr(_ssl, "SSLContext"):
        raise MicroTlsUnsupported("this port's ssl module cannot verify the broker "
                                  "(no ssl.SSLContext)")
    if not ca:
        raise MicroTlsUnsupported("no CA certificate to verify the broker with")
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    if not hasattr(ctx, "load_verify_locations"):
        raise MicroTlsUnsupported("this port's SSLContext cannot load a CA")
    ctx.verify_mode = _ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=ca_der(ca))
    except (ValueError, OSError) as exc:
        raise MicroTlsUnsupported("the CA certificate cannot be loaded: %s" % exc) from None
    if ctx.verify_mode != _ssl.CERT_REQUIRED:
        raise MicroTlsUnsupported("this port's SSLContext does not keep CERT_REQUIRED")
    return ctx


class MicroLink:
    """tls=True needs `ca` (PEM/DER bytes): the broker is verified, or the link is not made."""

    def __init__(self, host, port=1883, client_id="", username=None, password=None,
                 keepalive=30, will=None, tls=False, ca=None, clean_session=True,
                 backoff_min_ms=500, backoff_max_ms=30000, log=None):
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.will = will  # (topic, payload, qos, retain) or None
        # Made here so a port that cannot verify the broker is refused at start; the
        # context keeps what it needs of `ca` (None: mqtt://, no TLS).
        self.tls_context = tls_context(ca) if tls else None
        self.clean_session = clean_session
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.log = log or (lambda msg: None)
        self.connected = False
        self.sock = None
        # every read lands in this one block, made while the heap is still whole: a read
        # never needs READ_CHUNK bytes in one piece of a fragmented heap, only what came
        self._read_buf = bytearray(READ_CHUNK)
        self.poller = None
        self.buf = b""
        self.skip = 0  # bytes of an oversized PUBLISH still to discard
        # the topic filters (with their QoS) as a SUBSCRIBE carries them, one after the
        # other in one block: a board keeps a few hundred bytes, not a tuple and a str
        # for each of its ~16 subscriptions
        self.subs = bytearray()
        self.inflight = {}  # packet id -> publish packet bytes (QoS 1, awaiting PUBACK)
        self.next_pid = 1
        self.delay_ms = backoff_min_ms
        self.next_attempt = 0
        self.last_out = 0
        self.last_in = 0
        self.running = False
        self.counters = {"connects": 0, "failures": 0, "malformed": 0, "oversized": 0}
        self._on_message = self._on_connect = self._on_disconnect = None

    # -- the link contract ---------------------------------------------------
    def set_will(self, topic, payload, qos=1, retain=True):
        """The last will sent with the next CONNECT (agent.boot sets it before start())."""
        self.will = (topic, payload, qos, retain)

    def set_callbacks(self, on_message=None, on_connect=None, on_disconnect=None):
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect

    def subscribe(self, topic, qos=1):
        entry = _str(topic) + bytes((qos,))
        if not _has_filter(self.subs, entry):
            self.subs.extend(entry)
        if self.connected:
            self._send_subscribe(entry)

    def publish(self, topic, payload, qos=0, retain=False):
        if not self.connected:
            raise MicroMqttNotConnected("not connected")
        if qos and len(self.inflight) >= MAX_INFLIGHT:
            raise MicroMqttError("too many unacknowledged messages")
        pid = self._pid() if qos else 0
        head = _str(topic) + (struct.pack(">H", pid) if qos else b"")
        head = _packet(0x30 | (2 if qos else 0) | (1 if retain else 0), head,
                       len(head) + len(payload))
        # one block the size of the packet, the payload copied in once: a board's heap
        # never holds the payload two or three times over while a report goes out
        pkt = bytearray(len(head) + len(payload))
        pkt[:len(head)] = head
        memoryview(pkt)[len(head):] = payload
        if qos:
            self.inflight[pid] = pkt
        self._write(pkt)

    def start(self):
        self.running = True
        self.next_attempt = 0

    def poll(self, timeout_ms=100):
        """Drive the connection once; never raises (trouble means a reconnect)."""
        now = monotonic_ms()
        if not self.connected:
            if self.running and now >= self.next_attempt:
                self._try_connect(now)
            return
        try:
            self._read(timeout_ms)
            self._keepalive(monotonic_ms())
        except (OSError, MicroMqttError) as exc:
            self._lost(exc)

    def close(self):
        self.running = False
        if self.connected:
            try:
                self._write(b"\xe0\x00")  # DISCONNECT: the broker discards the will
            except OSError:
                pass
        self._drop_socket()
        self.connected = False

    # -- connection ------------------------------------------------------------
    def _try_connect(self, now):
        try:
            addr = socket.getaddrinfo(self.host, self.port)[0][-1]
            sock = socket.socket()
            try:
                sock.settimeout(CONNECT_TIMEOUT_S)
            except (AttributeError, OSError):  # some ports lack settimeout
                pass
            sock.connect(addr)
            if self.tls_context is not None:
                # verify_mode CERT_REQUIRED and the host name: a certificate not
                # signed by our CA, or for another host, fails the handshake.
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
            self.sock = sock
            self.buf = b""
            self.skip = 0
            self._write(self._connect_packet())
            self._await_connack()
        except (OSError, MicroMqttError, IndexError, ValueError) as exc:
            # MicroPython raises ValueError for a certificate that fails verification
            self.counters["failures"] += 1
            self._drop_socket()
            jitter = int.from_bytes(jitter_bytes(2), "big") % (self.delay_ms // 2 + 1)
            self.next_attempt = now + self.delay_ms + jitter
            self.log("connect to %s:%d failed (%s); retry in %d ms" % (
                self.host, self.port, exc, self.delay_ms + jitter))
            self.delay_ms = min(self.delay_ms * 2, self.backoff_max_ms)
            return
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        self.connected = True
        self.delay_ms = self.backoff_min_ms
        self.counters["connects"] += 1
        self.last_in = monotonic_ms()
        if self.subs:
            self._send_subscribe(self.subs)
        for pid in sorted(self.inflight):  # unacknowledged QoS 1: again, with DUP set
            pkt = self.inflight[pid]
            self._write(bytes((pkt[0] | 0x08,)) + pkt[1:])
        if self._on_connect:
            self._on_connect()

    def _connect_packet(self):
        flags = 0x02 if self.clean_session else 0
        payload = _str(self.client_id)
        if self.will:
            topic, message, qos, retain = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(message)
        if self.username is not None:
            flags |= 0x80
            payload += _str(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        body = _str("MQTT") + bytes((4, flags)) + struct.pack(">H", self.keepalive) + payload
        return _packet(0x10, body)

    def _await_connack(self):
        deadline = monotonic_ms() + CONNECT_TIMEOUT_S * 1000
        while monotonic_ms() < deadline:
            chunk = self.sock.recv(4)
            if not chunk:
                raise MicroMqttError("broker closed the connection")
            self.buf += chunk
            if len(self.buf) >= 4:
                break
        if len(self.buf) < 4 or self.buf[0] != 0x20 or self.buf[1] != 2:
            raise MicroMqttError("no CONNACK from the broker")
        rc = self.buf[3]
        self.buf = self.buf[4:]
        if rc:
            raise MicroMqttError("broker refused the connection (CONNACK rc=%d)" % rc)
        try:
            self.sock.settimeout(None)
        except (AttributeError, OSError):
            pass

    def _lost(self, exc):
        self.log("broker link lost: %s" % exc)
        self._drop_socket()
        was = self.connected
        self.connected = False
        self.next_attempt = monotonic_ms() + self.delay_ms
        if was and self._on_disconnect:
            self._on_disconnect(str(exc))

    def _drop_socket(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.poller = None

    # -- I/O ---------------------------------------------------------------------
    def _write(self, data):
        view = memoryview(data)
        while len(view):
            n = self.sock.send(view)
            if n is None:  # some MicroPython ports return None for "would block"
                n = 0
            view = view[n:]
        self.last_out = monotonic_ms()

    def _pid(self):
        pid = self.next_pid
        self.next_pid = pid % 65535 + 1
        return pid

    def _send_subscribe(self, filters):
        """SUBSCRIBE `filters`: topic filters with their QoS byte, encoded (self.subs)."""
        self._write(_packet(0x82, struct.pack(">H", self._pid()) + filters))

    def _keepalive(self, now):
        if not self.keepalive:
            return
        if now - self.last_in > self.keepalive * 1500:
            raise MicroMqttError("no answer from the broker for %d s" % (self.keepalive * 1.5))
        if now - self.last_out > self.keepalive * 500:
            self._write(b"\xc0\x00")  # PINGREQ

    def _read(self, timeout_ms):
        events = self.poller.poll(timeout_ms)
        if not events:
            return
        try:
            n = _read_some(self.sock, self._read_buf)
        except OSError as exc:
            if exc.args and exc.args[0] == EAGAIN:
                return
            raise
        if n is None:  # a non-blocking port's "nothing yet"
            return
        if not n:
            raise MicroMqttError("broker closed the connection")
        chunk = memoryview(self._read_buf)[:n]
        self.last_in = monotonic_ms()
        if self.skip:  # the tail of an oversized PUBLISH: read past it, keep nothing
            if len(chunk) <= self.skip:
                self.skip -= len(chunk)
                return
            chunk = chunk[self.skip:]
            self.skip = 0
        packets, self.buf, self.skip = parse_packets(self.buf + chunk)
        for packet in packets:
            if len(packet) == 3:
                self._handle_oversized(*packet)
            else:
                self._handle(*packet)

    def _handle(self, first, body):
        kind = first & 0xF0
        if kind == 0x30:
            self._handle_publish(first, body, oversized=False)
        elif kind == 0x40 and len(body) >= 2:  # PUBACK
            self.inflight.pop(struct.unpack(">H", body[:2])[0], None)
        elif kind in (0x90, 0xD0):  # SUBACK, PINGRESP
            return
        else:
            self.counters["malformed"] += 1

    def _handle_oversized(self, first, head, length):
        self.counters["oversized"] += 1
        self.log("skipped a PUBLISH of %d bytes (more than %d)" % (length, MAX_PACKET))
        self._handle_publish(first, head, oversized=True)

    def _handle_publish(self, first, body, oversized):
        qos = (first >> 1) & 3
        if len(body) < 2:
            raise MicroMqttError("short PUBLISH")
        tlen = struct.unpack(">H", body[:2])[0]
        pos = 2 + tlen
        if pos > len(body) or (qos and pos + 2 > len(body)):
            raise MicroMqttError("PUBLISH topic runs past the packet")
        try:
            topic = body[2:pos].decode("utf-8")
        except (UnicodeError, ValueError):
            raise MicroMqttError("PUBLISH topic is not UTF-8") from None
        pid = None
        if qos:
            pid = struct.unpack(">H", body[pos:pos + 2])[0]
            pos += 2
        payload = None if oversized else body[pos:]
        if self._on_message:
            self._on_message(topic, payload, bool(first & 1))
        if qos == 1 and self.connected:
            self._write(b"\x40\x02" + struct.pack(">H", pid))  # PUBACK after the callback
