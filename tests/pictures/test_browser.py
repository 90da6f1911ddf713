"""The page ``modify.show`` writes, opened offline in headless Chromium: it draws, and draws the tree.

The screenshot comes from ``chromium --screenshot``. treescope draws inside a shadow root, which
``--dump-dom`` does not serialise, so the rendered text is read over the DevTools protocol
(``--remote-debugging-pipe``: JSON messages on file descriptors 3 and 4, each ending in a NUL).
Skipped only where Chromium is absent and ``CI`` is unset; CI installs Debian's ``chromium``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time

import pytest

import modify
from modify.models import GPT, GPTConfig

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None and not os.environ.get("CI"), reason="chromium not installed")

# No network, no profile, no background services: the page must draw from the file alone.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1400,900"]  # fmt: skip
RENDERED_TEXT = (
    "Array.from(document.querySelectorAll('treescope-container')).map(c => c.shadowRoot.textContent).join('\\n')"
)


def _high_fds(*fds: int) -> list[int]:
    """The descriptors moved to numbers above 9, so that the redirections to 3 and 4 cannot clash."""
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
    for fd in fds:
        os.close(fd)
    return moved


class DevTools:
    """A headless Chromium driven over ``--remote-debugging-pipe``."""

    def __init__(self, url: str, profile: str):
        browser_in, self._writer = _high_fds(*os.pipe())  # chromium reads our commands on its fd 3
        self._reader, browser_out = _high_fds(*os.pipe())  # and writes its replies on its fd 4
        command = f'exec "$0" "$@" 3<&{browser_in} 4>&{browser_out}'
        self.process = subprocess.Popen(
            ["bash", "-c", command, BROWSER, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", url],
            pass_fds=(browser_in, browser_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(browser_in)
        os.close(browser_out)
        self._buffer, self._id = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._reader, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self._writer)
        os.close(self._reader)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The demo's picture: a GPT and its LoRA sibling, written by ``modify.show``."""
    base = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    adapted = modify.lora(base, 4, where="*.c_attn")
    target = tmp_path_factory.mktemp("show") / "models.html"
    modify.show(base, adapted, path=target)
    adapted_paths = [p for p, m in adapted.named_modules() if isinstance(m, modify.LoRA)]
    return target, adapted_paths


def test_screenshot_is_not_blank(page, tmp_path):
    target, _ = page
    shot = tmp_path / "shot.png"
    flags = [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", f"--screenshot={shot}"]
    subprocess.run([BROWSER, *flags, target.as_uri()], check=True, timeout=120, capture_output=True)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1400)
    dark = (pixels.mean(axis=-1) < 0.5).mean()  # text and tree lines on a white page
    assert 0.005 < dark < 0.5 and pixels.reshape(-1, 3).std(axis=0).max() > 0.05


def test_rendered_tree_holds_the_adapted_paths(page, tmp_path):
    target, adapted_paths = page
    browser = DevTools(target.as_uri(), str(tmp_path / "profile"))
    try:
        targets = browser.call("Target.getTargets")["targetInfos"]
        page_id = next(t["targetId"] for t in targets if t["type"] == "page")
        session = browser.call("Target.attachToTarget", targetId=page_id, flatten=True)["sessionId"]
        text, deadline = "", time.monotonic() + 60
        while "LoRA" not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            text = browser.call("Runtime.evaluate", session, expression=RENDERED_TEXT, returnByValue=True)["result"]
            text = text.get("value") or ""
    finally:
        browser.close()
    assert len(adapted_paths) == 2
    for path in adapted_paths:
        assert f"# {path} " in text
    assert text.count("shared") >= 2 and "LoRA(rank=4, alpha=4)" in text
