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
    import packages
    # gcc, ar and strip: build/relink.py links the image's python3.11
    for tool in ("dpkg-deb", packages.COMPRESSOR[0], "apt-get", "gcc", "ar", "strip"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (make deps installs the image tools)"
    return None


def initramfs_entries(path: Path) -> list[tuple[str, int, bytes, int]]:
    """(name, mode, data, mtime) of each member of an initrd, decompressed by
    the compressor's own command rather than by the builder's code."""
    import cpio
    import packages
    raw = subprocess.run([*packages.DECOMPRESSOR, str(path)], capture_output=True, check=True).stdout
    return list(cpio.read(raw))


needs_build_tools = pytest.mark.skipif(_can_build() is not None, reason=_can_build() or "")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="needs qemu-system-x86_64 (apt-get install qemu-system-x86)")


def _build(config: pytest.Config, kernel: str, folder: str | None = None) -> dict:
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    import make_image
    out = make_image.IMAGES / folder if folder else make_image.IMAGES
    try:
        # the build's progress goes to the terminal as it happens: on a fresh
        # machine (CI) it compiles the kernel, which takes minutes
        with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            return make_image.build(out, make_image.packages.CACHE, kernel=kernel)
    except (make_image.BuildError, subprocess.CalledProcessError) as e:
        # a pin the mirror no longer has is a failure to see, not a skip
        pytest.fail(f"image build failed: {e}")


@pytest.fixture(scope="session")
def image(pytestconfig) -> dict:
    """images/ as `make image` makes it, with the appliance's own kernel
    (skipped when up to date); its manifest."""
    return _build(pytestconfig, "appliance")


@pytest.fixture(scope="session")
def debian_image(pytestconfig) -> dict:
    """images/debian/: the same image with Debian's stock kernel and its NIC
    modules (`make image KERNEL=debian`, in a folder of its own)."""
    return _build(pytestconfig, "debian", "debian")
