"""A real mosquitto for tests and the bench: start on a free loopback port, wait, kill.

Tests never skip when mosquitto is missing: CI installs it, so a missing
binary is a failure with a message saying how to install it.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid

from firmware_shim.mqtt_paho import free_port

CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def _me():
    return pwd.getpwuid(os.geteuid()).pw_name


class BrokerMissing(RuntimeError):
    pass


def mosquitto_binary():
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("mosquitto")
    if found:
        return found
    raise BrokerMissing(
        "mosquitto is not installed (looked in {} and PATH); install it with "
        "`apt-get install mosquitto` (the MQTT tests need a real broker)".format(
            ", ".join(CANDIDATES))
    )


def unique(prefix="t"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Broker:
    """One mosquitto process. `extra` is appended to the listener config."""

    def __init__(self, workdir, extra="allow_anonymous true\n", port=None, persist=True):
        self.binary = mosquitto_binary()
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = os.path.join(workdir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(
                # Started as root, mosquitto would switch to user "mosquitto" and
                # lose access to our private temp files: stay who we are.
                f"user {_me()}\n"
                "per_listener_settings true\n"
                + (f"persistence true\npersistence_location {workdir}/\n"
                   "autosave_interval 1\nautosave_on_changes true\n" if persist else "")
                + "max_queued_messages 100000\n"
                f"listener {self.port} 127.0.0.1\n{extra}"
            )
        self.proc = None
        self.log_path = os.path.join(workdir, "mosquitto.log")

    def start(self, timeout=10.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.read_log()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port}")

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill(self):
        """SIGKILL: no clean shutdown, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
