"""Fixtures for the image tests: build/ on the path, and images/ built once a session."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "build"
if str(BUILD) not in sys.path:
    sys.path.insert(0, str(BUILD))


def _can_build() -> str | None:
    """Why the image cannot be built here, or None."""
    for tool in ("dpkg-deb", "zstd", "apt-get"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (make deps installs the image tools)"
    return None


needs_build_tools = pytest.mark.skipif(_can_build() is not None, reason=_can_build() or "")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="needs qemu-system-x86_64 (apt-get install qemu-system-x86)")


@pytest.fixture(scope="session")
def image() -> dict:
    """images/ as `make image` makes it (skipped when up to date); its manifest."""
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    import make_image
    try:
        return make_image.build(make_image.IMAGES, make_image.packages.CACHE)
    except (make_image.BuildError, subprocess.CalledProcessError) as e:
        # a pin the mirror no longer has is a failure to see, not a skip
        pytest.fail(f"image build failed: {e}")
