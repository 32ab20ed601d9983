"""Make sure Debian's Chromium is there for the browser tests (installs it when running as root).

Playwright's own browser download cannot work on these machines; the browser tests drive the
distribution's Chromium through Playwright's `executable_path` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        print(f"chromium: {found}")
        return 0
    if os.geteuid() != 0:
        print(
            "chromium is not installed and this is not root; install it with "
            "`sudo apt-get install chromium` to run the browser tests",
            file=sys.stderr,
        )
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    print(f"chromium: {shutil.which('chromium')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
