"""A minimal Chrome DevTools Protocol client (stdlib only) for the UI check's screenshots.

Headless Chromium's `--screenshot` cannot click; the runs table only shows a study's trials
once its parent row is expanded, a per-browser state no URL carries. This drives one page:
navigate, evaluate JavaScript, wait for text, capture a PNG.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


class DevTools:
    """A headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, browser: str, size: str = "1800,1000") -> None:
        self.profile = tempfile.mkdtemp(prefix="ui-check-chromium-")
        # Its own session: in the caller's process group headless Chromium hung here.
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={size}", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port within 60 s")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self._handshake(page["webSocketDebuggerUrl"].split(str(port), 1)[1], port)
        self.next_id = 0
        # The viewport itself, not the window (whose size includes no-longer-drawn chrome).
        width, height = (int(v) for v in size.split(","))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _handshake(self, path: str, port: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += self.sock.recv(4096)
        if b" 101 " not in reply.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"DevTools websocket refused: {reply[:200]!r}")

    def _recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError("DevTools websocket closed")
            data += chunk
        return bytes(data)

    def _send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  struct.pack("!BH", 0x80 | 126, n) if n < 65536 else
                                  struct.pack("!BQ", 0x80 | 127, n))
        # Client frames must be masked (RFC 6455).
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _recv(self) -> dict[str, Any]:
        message = b""
        while True:
            first, second = self._recv_exact(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._recv_exact(8))[0]
            payload = self._recv_exact(n)
            if first & 0x0F in (0x9, 0xA):  # ping/pong: not part of a message
                continue
            message += payload
            if first & 0x80:
                return json.loads(message)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = self._recv()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """Navigate and wait for the document to load."""
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'", 60)

    def wait(self, condition: str, timeout: float = 60) -> None:
        """Poll a JavaScript condition until it is true."""
        deadline = time.monotonic() + timeout
        while not self.js(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {condition}")
            time.sleep(0.5)

    def screenshot(self, png: Path) -> None:
        """PNG of the viewport."""
        png.write_bytes(base64.b64decode(self.call("Page.captureScreenshot",
                                                   format="png")["data"]))

    def close(self) -> None:
        """Stop Chromium and remove its profile."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
