"""The CPython MQTT link: a thin adapter over paho-mqtt 2.x (VERSION2 callbacks).

It owns: broker URLs, the connection config, turning paho's return codes into
our errors (MqttError -> MqttCodeError -> MqttConnectError), reconnecting with
bounded exponential backoff plus jitter, and plugging paho's external-loop
hooks (loop_read / loop_write / loop_misc and the socket callbacks) into a
selector so ONE thread can drive thousands of links (bench, simulator).

It must never let a paho type out: messages leave as (topic, payload, retain)
and connection changes as plain callbacks. The agent core never imports this
module; it is handed a link with subscribe / publish / poll / set_callbacks.
The MicroPython port plugs a umqtt-based link with the same surface.
"""
import random
import selectors
import socket
import ssl
import time
from urllib.parse import urlsplit

import paho.mqtt.client as _paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
# Devices speak 3.1.1 (any broker, the boards' client); operator tools speak 5, whose
# PUBACK carries a reason code: a publish the broker's ACL dropped is then visible.
MQTT_311 = "3.1.1"
MQTT_5 = "5"

# CONNACK codes (3.1.1: 4, 5; MQTT 5: 134, 135) that mean the login is wrong.
NOT_AUTHORISED = (4, 5, 134, 135)


def connect_refusal_text(rc):
    """One line for a refused CONNECT: "not authorised" for a bad login, else paho's words."""
    if int(rc) in NOT_AUTHORISED:
        return "not authorised (check the user name and password file)"
    try:
        return _paho.connack_string(int(rc))
    except Exception:
        return f"refused (code {int(rc)})"


class MqttError(Exception):
    """Anything that went wrong talking MQTT."""

    refusal = False  # True: the broker answered the CONNECT with a refusal


class MqttConfigError(MqttError):
    """A broker URL or link setting that cannot work."""


class MqttCodeError(MqttError):
    """paho returned an error code; `.rc` keeps it as a plain int."""

    def __init__(self, rc, what=""):
        self.rc = int(rc)
        try:
            text = _paho.error_string(rc)
        except Exception:  # unknown code: keep the number
            text = f"rc={self.rc}"
        MqttError.__init__(self, "{}{}".format(what + ": " if what else "", text))


class MqttConnectError(MqttCodeError):
    """The broker could not be reached or refused the connection."""

    @classmethod
    def refused(cls, rc):
        """A CONNACK refusal, in words ("not authorised" for a bad login)."""
        exc = cls(rc)
        exc.args = ("broker refused the connection: " + connect_refusal_text(rc),)
        exc.refusal = True
        return exc


class MqttNotConnected(MqttError):
    """publish/subscribe while the link is down (the caller decides whether to queue)."""


def parse_broker_url(url):
    """mqtt://host[:port] or mqtts://host[:port] -> (host, port, tls)."""
    if not isinstance(url, str) or not url:
        raise MqttConfigError("broker URL must be a non-empty string")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise MqttConfigError(f"broker URL {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MqttConfigError(f"broker URL {url!r}: no path, query or fragment allowed")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port
    except ValueError:
        raise MqttConfigError(f"broker URL {url!r}: port must be 1..65535") from None
    if port is None:
        port = 8883 if tls else 1883
    if not 0 < port < 65536:
        raise MqttConfigError(f"broker URL {url!r}: port must be 1..65535")
    return parts.hostname, port, tls


class Will:
    """The last will: published by the broker when the link dies without DISCONNECT."""

    __slots__ = ("topic", "payload", "qos", "retain")

    def __init__(self, topic, payload, qos=1, retain=True):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain


class MqttConfig:
    """Connection settings; read-only once built (assigning raises AttributeError)."""

    _FIELDS = (
        "host", "port", "client_id", "username", "password", "tls", "ca", "cert",
        "key", "insecure", "keepalive", "will", "clean_session", "backoff_min",
        "backoff_max", "connect_timeout", "protocol",
    )

    def __init__(self, host, port=1883, client_id="", username=None, password=None,
                 tls=False, ca=None, cert=None, key=None, insecure=False, keepalive=30,
                 will=None, clean_session=True, backoff_min=BACKOFF_MIN_S,
                 backoff_max=BACKOFF_MAX_S, connect_timeout=5.0, protocol=MQTT_311):
        values = dict(locals())
        del values["self"]
        if not 0 < backoff_min <= backoff_max:
            raise MqttConfigError("backoff needs 0 < backoff_min <= backoff_max")
        if keepalive < 1:
            raise MqttConfigError("keepalive must be >= 1 s")
        if (cert is None) != (key is None):
            raise MqttConfigError("a client certificate needs both cert and key")
        if protocol not in (MQTT_311, MQTT_5):
            raise MqttConfigError("protocol must be MQTT_311 or MQTT_5")
        for name in self._FIELDS:
            object.__setattr__(self, name, values[name])

    @classmethod
    def from_url(cls, url, **kwargs):
        host, port, tls = parse_broker_url(url)
        return cls(host, port, tls=tls or bool(kwargs.pop("tls", False)), **kwargs)

    def replace(self, **changes):
        values = {name: getattr(self, name) for name in self._FIELDS}
        values.update(changes)
        return MqttConfig(**values)

    def __setattr__(self, name, value):
        raise AttributeError("MqttConfig is read-only; use replace()")


class Backoff:
    """Exponential backoff with full jitter, bounded to [low, high] seconds."""

    def __init__(self, low=BACKOFF_MIN_S, high=BACKOFF_MAX_S, rng=None):
        self.low, self.high = low, high
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self):
        ceiling = min(self.high, self.low * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.low + self._rng.random() * max(0.0, ceiling - self.low)

    def reset(self):
        self.attempt = 0


def _ignore(*args):
    return None


class PahoLink:
    """One MQTT session. Drive it with `poll()` (blocking, the agent) or a MqttLoop (many).

    Callbacks (set_callbacks): on_message(topic, payload, retain),
    on_connect(), on_disconnect(reason_str). They run inside the I/O call,
    so an incoming QoS 1 message is PUBACKed only after on_message returned:
    a crash before the store commit means the broker redelivers it.
    """

    def __init__(self, config, rng=None, log=None):
        self.config = config
        self.connected = False
        self.sessions = 0  # successful CONNACKs so far
        self.last_error = None
        self._subs = {}
        self._on_message = self._on_connect = _ignore
        self._on_disconnect = _ignore
        self._backoff = Backoff(config.backoff_min, config.backoff_max, rng)
        self._retry_at = 0.0
        self._started = False
        self._tried = False
        self._closed = False
        self._loop: MqttLoop | None = None  # the loop driving this link, once added
        self._log = log or _ignore
        # mid -> None (sent, not yet acknowledged) or the broker's verdict: "" for
        # accepted, else its reason (MQTT 5 only; 3.1.1 PUBACKs carry none).
        self.publish_results = {}
        self._client = self._build_client()

    # -- setup -------------------------------------------------------------
    def _build_client(self):
        c = self.config
        if c.protocol == MQTT_5:
            client = _paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=c.client_id, protocol=_paho.MQTTv5)
        else:
            client = _paho.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=c.client_id,
                clean_session=c.clean_session,
                protocol=_paho.MQTTv311,
            )
        client.connect_timeout = c.connect_timeout
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls:
            try:
                client.tls_set(ca_certs=c.ca, certfile=c.cert, keyfile=c.key,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                files = ", ".join(f for f in (c.ca, c.cert, c.key) if f)
                why = getattr(exc, "strerror", None) or exc
                raise MqttConfigError(f"TLS setup failed ({files}): {why}") from None
            if c.insecure:
                client.tls_insecure_set(True)  # dev only: skip the host-name check
        if c.will is not None:
            w = c.will
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_published
        client.on_socket_open = self._paho_socket_open
        client.on_socket_close = self._paho_socket_close
        client.on_socket_register_write = self._paho_want_write
        client.on_socket_unregister_write = self._paho_done_write
        return client

    def set_will(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> None:
        """Replace the last will before start() (agent.boot knows the final one only once
        the flash is open)."""
        will = Will(topic, payload, qos, retain)
        self.config = self.config.replace(will=will)
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    def set_callbacks(self, on_message=None, on_connect=None, on_disconnect=None):
        self._on_message = on_message or _ignore
        self._on_connect = on_connect or _ignore
        self._on_disconnect = on_disconnect or _ignore

    # -- paho callbacks (translated, never leaked) -------------------------
    def _paho_published(self, client, userdata, mid, reason_code, properties):
        if mid in self.publish_results:
            failed = getattr(reason_code, "is_failure", False)
            self.publish_results[mid] = str(reason_code) if failed else ""

    def _paho_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.last_error = MqttConnectError.refused(reason_code.value)
            self._log(f"mqtt: {self.last_error}")
            self._schedule_retry()
            return
        self.connected = True
        self.last_error = None
        self.sessions += 1
        self._backoff.reset()
        for topic in sorted(self._subs):
            client.subscribe(topic, qos=self._subs[topic])
        self._on_connect()

    def _paho_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self.connected
        self.connected = False
        if not self._closed:
            self._schedule_retry()
        if was:
            self._on_disconnect(str(reason_code))

    def _paho_message(self, client, userdata, msg):
        self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))

    def _paho_socket_open(self, client, userdata, sock):
        if self._loop is not None:
            self._loop._register(self, sock)

    def _paho_socket_close(self, client, userdata, sock):
        if self._loop is not None:
            self._loop._unregister(self, sock)

    def _paho_want_write(self, client, userdata, sock):
        if self._loop is not None:
            self._loop._want_write(self, sock, True)

    def _paho_done_write(self, client, userdata, sock):
        if self._loop is not None:
            self._loop._want_write(self, sock, False)

    # -- connection --------------------------------------------------------
    def _schedule_retry(self):
        self._retry_at = time.monotonic() + self._backoff.next_delay()

    def start(self):
        """Begin connecting (non-blocking past the TCP connect). Failures retry with backoff."""
        self._started = True
        self._closed = False
        self._attempt()

    def _attempt(self):
        c = self.config
        try:
            if not self._tried:
                self._tried = True
                if c.protocol == MQTT_5:
                    rc = self._client.connect(c.host, c.port, keepalive=c.keepalive,
                                              clean_start=c.clean_session)
                else:
                    rc = self._client.connect(c.host, c.port, keepalive=c.keepalive)
            else:
                rc = self._client.reconnect()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.last_error = MqttConnectError(MQTTErrorCode.MQTT_ERR_NO_CONN, str(exc))
            self._schedule_retry()
            return False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.last_error = MqttConnectError(rc, "connect")
            self._schedule_retry()
            return False
        return True

    def service(self, now=None):
        """Keepalive and reconnect bookkeeping; call a few times a second."""
        if not self._started or self._closed:
            return
        rc = self._client.loop_misc()
        if self._client.socket() is None and not self.connected:
            if (now if now is not None else time.monotonic()) >= self._retry_at:
                self._attempt()
        elif rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.last_error = MqttCodeError(rc, "loop_misc")

    def close(self):
        """Disconnect cleanly: the broker does NOT publish the will."""
        self._closed = True
        try:
            if self.connected:
                self._client.disconnect()
                self._client.loop_write()
        except Exception:  # closing must not raise: the socket may be gone already
            pass
        self.connected = False
        self._drop_socket()

    def abort(self):
        """Drop the connection WITHOUT a DISCONNECT, as a power cut does: the broker
        publishes the will, and the link stays closed. Safe inside a callback: a message
        being handled is never acknowledged (paho would PUBACK it once on_message
        returns), so the broker keeps it for the session; the socket itself closes
        when the loop's current round ends (paho holds a lock during callbacks)."""
        self._closed = True
        self.connected = False
        self._client._manual_ack = True
        if self._loop is not None:
            self._loop._aborted.append(self)
        else:
            self._drop_socket()

    def _drop_socket(self):
        sock = self._client.socket()
        if sock is not None and self._loop is not None:
            self._loop._unregister(self, sock)
        try:
            self._client._sock_close()  # paho has no public "drop socket" call
        except Exception:
            pass

    # -- traffic -----------------------------------------------------------
    def subscribe(self, topic, qos=1):
        self._subs[topic] = qos
        if self.connected:
            rc, _mid = self._client.subscribe(topic, qos=qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttCodeError(rc, f"subscribe {topic}")

    def publish(self, topic, payload, qos=0, retain=False, track=False):
        """Queue one message; with track=True returns its mid, whose verdict lands in
        publish_results[mid] when the broker acknowledges it (QoS 1)."""
        if not self.connected:
            raise MqttNotConnected(f"link down: cannot publish to {topic}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttCodeError(info.rc, f"publish {topic}")
        if track:
            self.publish_results[info.mid] = None
            return info.mid
        return None

    def pending_out(self):
        """Bytes or QoS>0 messages still queued inside paho (a drain check)."""
        return self._client.want_write()

    # -- driving -----------------------------------------------------------
    def poll(self, timeout_ms=100):
        """Blocking mode for a single link: wait up to timeout_ms for traffic and handle it."""
        loop = self._loop
        if loop is None:
            loop = MqttLoop()
            loop.add(self)  # sets self._loop
        loop.run_once(timeout_ms / 1000.0)

    def _read(self):
        rc = self._client.loop_read()
        if rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            return
        if getattr(self.last_error, "refusal", False):
            return  # on_connect said why (paho then reports the closed socket too)
        if rc == MQTTErrorCode.MQTT_ERR_CONN_REFUSED:
            self.last_error = MqttConnectError(rc, "broker refused connection")
        else:
            self.last_error = MqttCodeError(rc, "read")

    def _write(self):
        rc = self._client.loop_write()
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self.last_error = MqttCodeError(rc, "write")


class MqttLoop:
    """One selector serving many links in one thread (the aiomqtt pattern, without asyncio)."""

    def __init__(self, misc_interval=0.25):
        self._sel = selectors.DefaultSelector()
        self._links = []
        self._aborted = []  # links abort()ed during this round: closed after it
        self._misc_interval = misc_interval
        self._next_misc = 0.0

    def add(self, link):
        link._loop = self
        self._links.append(link)
        sock = link._client.socket()
        if sock is not None:
            self._register(link, sock)
        return link

    def remove(self, link):
        sock = link._client.socket()
        if sock is not None:
            self._unregister(link, sock)
        link._loop = None
        self._links.remove(link)

    def _register(self, link, sock):
        try:
            self._sel.register(sock, selectors.EVENT_READ, link)
        except KeyError:  # already registered (paho re-opened the same fd)
            self._sel.modify(sock, selectors.EVENT_READ, link)
        except ValueError:  # socket already closed
            pass
        if link._client.want_write():
            self._want_write(link, sock, True)

    def _unregister(self, link, sock):
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _want_write(self, link, sock, on):
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self._sel.modify(sock, events, link)
        except (KeyError, ValueError):
            pass

    def run_once(self, timeout=0.1):
        """Handle whatever is ready within `timeout` seconds; returns the number of events."""
        now = time.monotonic()
        if now >= self._next_misc:
            self._next_misc = now + self._misc_interval
            for link in list(self._links):
                link.service(now)
        if not self._sel.get_map():
            time.sleep(min(timeout, self._misc_interval))
            return 0
        try:
            ready = self._sel.select(timeout)
        except (OSError, ValueError):  # a socket closed under us: next round re-registers
            return 0
        for key, mask in ready:
            link = key.data
            if mask & selectors.EVENT_READ:
                link._read()
            if mask & selectors.EVENT_WRITE and link._client.socket() is not None:
                link._write()
        while self._aborted:
            link = self._aborted.pop()
            link._drop_socket()
            if link in self._links:
                self.remove(link)
        return len(ready)

    def run_until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.run_once(min(left, 0.05))
        return True

    def close(self):
        for link in list(self._links):
            link.close()
        self._sel.close()


def _below_ephemeral():
    """(low, high) of ports under the kernel's ephemeral range, or None off Linux.
    Outgoing connections take ephemeral ports, so a port chosen there can be taken by
    any client between our check and the broker's bind; a port below it cannot."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (10000, low) if low > 12000 else None


def _bound_socket():
    """A socket bound to a free loopback port: a random one below the ephemeral range
    when there is one, else one the kernel picks."""
    span = _below_ephemeral()
    for _ in range(200 if span else 0):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", random.randrange(*span)))
            return s
        except OSError:
            s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def free_port():
    """A free loopback TCP port (for tests and the bench, which start their own broker)."""
    s = _bound_socket()
    port = s.getsockname()[1]
    s.close()
    return port


def free_ports(n):
    """n different free loopback TCP ports: each is held until all are chosen, so two
    calls in a row cannot hand out the same one."""
    held: list[socket.socket] = []
    try:
        while len(held) < n:
            held.append(_bound_socket())
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()
