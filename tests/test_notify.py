"""Alert notifications: a real MQTT broker (Debian's mosquitto, started here on a loopback
port) and Apprise's json:// target pointed at a local HTTP server. Alerts raised while a
target is down wait in alerts.jsonl and arrive, in order and once, when it comes back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cvahash.station.config import loads_config
from cvahash.station.notify import (
    AppriseTarget,
    MqttTarget,
    Notifier,
    targets_from_settings,
)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(tmp_path, port: int) -> subprocess.Popen:
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()) from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Subscriber:
    """A paho client that collects every message under a topic."""

    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1),
                                                          self.ready.set())
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(5)
        time.sleep(0.2)  # the SUBACK

    def wait_for(self, n: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def alert(i: int, watch: str = "woodpecker") -> dict:
    return {"watch": watch, "query": "woodpecker drumming", "distance": 3 + i % 2, "radius": 8,
            "recording": "/var/lib/cvahash/audio/x.flac", "offset_s": 5.0 * i,
            "capture_utc": f"2024-06-12T05:00:{i:02d}+00:00", "row": 100 + i}


def append(log, alerts) -> None:
    with open(log, "a") as fh:
        for a in alerts:
            fh.write(json.dumps(a) + "\n")


@pytest.mark.skipif(not shutil.which(MOSQUITTO) and not __import__("os").path.exists(MOSQUITTO),
                    reason="mosquitto is not installed (apt-get install mosquitto)")
def test_mqtt_alerts_wait_while_the_broker_is_down_and_arrive_in_order(tmp_path):
    port = free_port()
    log = tmp_path / "alerts.jsonl"
    append(log, [alert(0)])  # before the notifier existed: not replayed
    target = MqttTarget(f"mqtt://127.0.0.1:{port}", "station/alerts", timeout_s=3)
    notifier = Notifier(log, [target], retry_s=1000, station="ridge-1")
    append(log, [alert(1), alert(2, "chainsaw")])
    # No broker yet: nothing is sent, nothing is lost.
    assert notifier.send_pending(now=0) == 0
    assert notifier.pending(target) > 0 and notifier.failures == 1
    # Within the retry delay the target is left alone.
    assert notifier.send_pending(now=10) == 0 and notifier.failures == 1
    broker = start_broker(tmp_path, port)
    try:
        sub = Subscriber(port, "station/alerts/#")
        append(log, [alert(3)])
        assert notifier.send_pending(now=2000) == 3
        got = sub.wait_for(3)
        assert [(t, m["row"]) for t, m in got] == [
            ("station/alerts/woodpecker", 101), ("station/alerts/chainsaw", 102),
            ("station/alerts/woodpecker", 103)]
        assert got[0][1]["station"] == "ridge-1" and got[0][1]["distance"] == 4
        assert notifier.pending(target) == 0
        # A second notifier (the daemon restarted) resumes from the saved cursor.
        append(log, [alert(4)])
        target.close()
        again = Notifier(log, [MqttTarget(f"mqtt://127.0.0.1:{port}", "station/alerts")],
                         retry_s=1)
        assert again.send_pending() == 1
        assert [m["row"] for _, m in sub.wait_for(4)] == [101, 102, 103, 104]
        again.stop()
        sub.close()
    finally:
        stop(broker)


class Collector(BaseHTTPRequestHandler):
    received: list = []
    fail_next = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if Collector.fail_next:
            Collector.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        Collector.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_apprise_json_target_retries_a_failed_delivery(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Collector.received, Collector.fail_next = [], 1
    try:
        log = tmp_path / "alerts.jsonl"
        log.touch()
        url = f"json://127.0.0.1:{server.server_address[1]}/hook"
        target = AppriseTarget(url)
        notifier = Notifier(log, [target], retry_s=5, station="pond-2")
        append(log, [alert(1), alert(2)])
        assert notifier.send_pending(now=0) == 0  # the server answered 503
        assert notifier.send_pending(now=1) == 0  # waiting for the retry
        assert notifier.send_pending(now=6) == 2
        assert len(Collector.received) == 2
        first = Collector.received[0]
        assert first["title"] == "cvahash pond-2: woodpecker"
        assert "2024-06-12T05:00:01" in first["message"] and "distance 4" in first["message"]
        assert "hook" not in target.name and "127.0.0.1" not in target.name  # no URL in logs
    finally:
        server.shutdown()


def test_background_thread_sends_new_alerts(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Collector.received, Collector.fail_next = [], 0
    try:
        log = tmp_path / "alerts.jsonl"
        notifier = Notifier(log, [AppriseTarget(f"json://127.0.0.1:{server.server_address[1]}")],
                            retry_s=1).start()
        append(log, [alert(7)])
        notifier.poke()
        deadline = time.monotonic() + 10
        while not Collector.received and time.monotonic() < deadline:
            time.sleep(0.05)
        notifier.stop()
        assert len(Collector.received) == 1
    finally:
        server.shutdown()


class Recorder:
    """A target that keeps the rows it was sent (the bookkeeping tests need no broker)."""

    name = "recorder"

    def __init__(self):
        self.sent = []

    def send(self, a):
        self.sent.append(a["row"])

    def close(self):
        pass


def test_a_damaged_line_is_skipped_not_retried_forever(tmp_path):
    target = Recorder()
    sent = target.sent
    log = tmp_path / "alerts.jsonl"
    log.touch()
    n = Notifier(log, [target])
    append(log, [alert(1)])
    with open(log, "a") as fh:
        fh.write("{not json\n")
    append(log, [alert(2)])
    with open(log, "a") as fh:
        fh.write('{"watch": "half a line')  # still being written: left for later
    assert n.send_pending() == 2 and sent == [101, 102]
    assert n.send_pending() == 0


def test_config_notify_section_makes_targets():
    cfg = loads_config('[device]\nname="s"\n[runtime]\nbundle="b"\n[store]\npath="st"\n'
                       '[notify]\nmqtt="mqtt://u:p%40ss@10.0.0.2"\napprise=["json://h/x"]\n',
                       base_dir="/base")
    targets = targets_from_settings(cfg.notify)
    assert [type(t).__name__ for t in targets] == ["MqttTarget", "AppriseTarget"]
    assert (targets[0].host, targets[0].port, targets[0].password) == ("10.0.0.2", 1883, "p@ss")
    with pytest.raises(Exception, match="broker URL"):
        loads_config('[device]\nname="s"\n[runtime]\nbundle="b"\n[store]\npath="st"\n'
                     '[notify]\nmqtt="http://x"\n')


@pytest.mark.skipif(not __import__("os").path.exists(MOSQUITTO), reason="no mosquitto")
def test_daemon_sends_its_alerts_to_the_broker(tmp_path):
    """End to end: the daemon replays a recording, its watchlist (radius 64 of 64 bits:
    every window) writes alerts.jsonl, and [notify] publishes each one to mosquitto."""
    import subprocess as sp
    import sys
    from pathlib import Path

    import numpy as np
    import soundfile as sf

    port = free_port()
    broker = start_broker(tmp_path, port)
    try:
        sub = Subscriber(port, "st/#")
        rec = tmp_path / "20240612_053000.wav"
        sf.write(str(rec), 0.1 * np.random.default_rng(0).standard_normal(16000 * 30)
                 .astype(np.float32), 16000)
        bundle = Path(__file__).parent / "data" / "demo-bundle"
        cfg = tmp_path / "station.toml"
        cfg.write_text(f"""
[device]
name = "ridge-9"
[runtime]
bundle = "{bundle}"
threads = 1
[store]
path = "{tmp_path / 'store'}"
[[watchlist]]
name = "anything"
query = "any sound at all"
radius = 64
cooldown_s = 0
[status]
path = "{tmp_path / 'status.json'}"
[notify]
mqtt = "mqtt://127.0.0.1:{port}"
mqtt_topic = "st"
""")
        res = sp.run([sys.executable, "-m", "cvahash", "daemon", "--config", str(cfg),
                      "--source", f"file:{rec}", "--fast"], capture_output=True, text=True,
                     timeout=120, check=False)
        assert res.returncode == 0, res.stderr
        lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        assert len(lines) >= 5  # 30 s at a 5 s hop
        got = sub.wait_for(len(lines))
        assert [m["row"] for _, m in got] == [a["row"] for a in lines]
        assert {t for t, _ in got} == {"st/anything"}
        assert all(m["station"] == "ridge-9" for _, m in got)
        sub.close()
    finally:
        stop(broker)


def test_a_missing_library_is_a_failed_send_with_the_fix(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_paho(name, *args, **kwargs):
        if name.startswith(("paho", "apprise")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_paho)
    log = tmp_path / "alerts.jsonl"
    log.touch()
    targets = [MqttTarget("mqtt://127.0.0.1:1", "t"), AppriseTarget("json://127.0.0.1:1")]
    n = Notifier(log, targets, retry_s=60)
    append(log, [alert(1)])
    assert n.send_pending(now=0) == 0 and n.failures == 2
    assert all(n.pending(t) > 0 for t in targets)  # kept for when the library is there


@pytest.mark.parametrize("damage", ["garbage", "huge", "fifo"])
def test_a_damaged_state_file_resumes_at_new_alerts_without_hanging(tmp_path, caplog, damage):
    import os

    target = Recorder()
    sent = target.sent
    log = tmp_path / "alerts.jsonl"
    append(log, [alert(1)])  # already in the log before the notifier starts
    state = tmp_path / "alerts.notify.json"
    if damage == "garbage":
        state.write_bytes(b"\x00\xffnot json")
    elif damage == "huge":
        state.write_text('{"cursors": {"recorder": 0}, "pad": "' + "x" * (2 << 20) + '"}')
    else:
        os.mkfifo(state)  # reading it with a plain open() would block forever
    with caplog.at_level("WARNING"):
        n = Notifier(log, [target], state_path=state)
    assert "unreadable state file" in caplog.text and str(state) in caplog.text
    append(log, [alert(2)])
    assert n.send_pending() == 1 and sent == [102]  # alert 1 is not sent again
    if damage != "fifo":
        assert json.loads(state.read_text())["cursors"]["recorder"] == log.stat().st_size
