"""The appliance's kernel: its configuration fragment, the configuration the
kernel's own Kconfig made of it, and a second build from nothing that must
give the same bytes.

The built files are read with binutils' readelf, not the builder's ELF reader.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import kernel  # noqa: E402  (build/, put on the path by conftest)
import make_image  # noqa: E402
import packages  # noqa: E402
import pytest

from .conftest import needs_build_tools


def test_every_option_in_the_fragment_says_why():
    assert kernel.unexplained_options(kernel.FRAGMENT.read_text()) == []


def test_an_option_without_a_reason_is_found():
    fragment = "# why the first two\nCONFIG_A=y\n# CONFIG_B is not set\n\nCONFIG_C=y\n"
    assert kernel.unexplained_options(fragment) == ["CONFIG_C=y"]


def test_an_option_kconfig_did_not_give_is_reported():
    requested = kernel.requested_options("# x\nCONFIG_NET=y\nCONFIG_VIRTIO_NET=y\n# CONFIG_INET is not set\n")
    final = "CONFIG_NET=y\n# CONFIG_VIRTIO_NET is not set\nCONFIG_INET=y\n"
    assert kernel.config_mismatches(requested, final) == ["CONFIG_VIRTIO_NET: asked y, got n",
                                                          "CONFIG_INET: asked n, got y"]
    assert kernel.config_mismatches(requested, "CONFIG_NET=y\nCONFIG_VIRTIO_NET=y\n") == []


def test_the_build_environment_pins_time_user_and_host():
    env = kernel.build_environment(1700000000)
    assert env["KBUILD_BUILD_TIMESTAMP"] == "Tue Nov 14 22:13:20 UTC 2023"
    assert env["KBUILD_BUILD_USER"] and env["KBUILD_BUILD_HOST"] and env["KBUILD_BUILD_VERSION"] == "1"


@pytest.fixture(scope="session")
def built(image) -> kernel.Kernel:
    """The cached appliance kernel the image was made with."""
    deb = make_image.packages.CACHE / "debs" / packages.KERNEL_SOURCE.filename
    return kernel.build(deb, make_image.packages.CACHE)


def readelf(*args: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("needs readelf (binutils)")
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


@needs_build_tools
def test_the_image_boots_the_built_kernel(image, built):
    assert image["kernel"]["kind"] == "appliance"
    assert (make_image.IMAGES / "dns.vmlinuz").read_bytes() == built.path.read_bytes()
    assert image["kernel_modules"] == [] and image["kernel"]["memory_mb"] == make_image.MEMORY_MB["appliance"]


@needs_build_tools
def test_the_final_config_holds_the_fragment_and_no_modules(built):
    final = built.config.read_text()
    assert kernel.config_mismatches(kernel.requested_options(kernel.FRAGMENT.read_text()), final) == []
    options = kernel.requested_options(final)
    assert options.get("CONFIG_MODULES", "n") == "n"           # PID 1 loads nothing
    assert options.get("CONFIG_INET", "n") == "n"              # no kernel IP stack to answer on the wire
    for driver in ("CONFIG_VIRTIO_NET", "CONFIG_XEN_NETDEV_FRONTEND", "CONFIG_HW_RANDOM_VIRTIO",
                   "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_HVC_XEN", "CONFIG_PACKET"):
        assert options[driver] == "y", driver
    # the kernel unpacks what build/ compresses the initramfs with
    compressor = packages.COMPRESSOR[0]
    assert options[{"xz": "CONFIG_RD_XZ", "zstd": "CONFIG_RD_ZSTD", "gzip": "CONFIG_RD_GZIP"}[compressor]] == "y"
    if "--x86" in packages.COMPRESSOR:
        assert options["CONFIG_XZ_DEC_X86"] == "y"          # xz's BCJ filter, decoded by the kernel


@needs_build_tools
def test_the_elf_inside_has_the_pvh_entry(built):
    notes = readelf("-n", str(built.vmlinux))
    # XEN_ELFNOTE_PHYS32_ENTRY is note type 18 of owner "Xen"
    assert any(line.split()[:1] == ["Xen"] and ("0x00000012" in line or "PHYS32_ENTRY" in line)
               for line in notes.splitlines()), notes
    assert "EXEC" in readelf("-h", str(built.vmlinux))
    assert built.path.stat().st_size <= 3_000_000, "the target is a kernel of at most 3 MB"


@pytest.mark.slow
@needs_build_tools
def test_two_kernel_builds_give_identical_bytes(built, tmp_path):
    """A second build from nothing, in another folder (so build paths would
    show), must give the same bzImage and ELF. Minutes: it compiles the kernel."""
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    os.symlink(built.path.parents[2] / "debs" / packages.KERNEL_SOURCE.filename,
               cache / "debs" / packages.KERNEL_SOURCE.filename)
    deb = cache / "debs" / packages.KERNEL_SOURCE.filename
    again = kernel.build(deb, cache)
    assert again.built_seconds is not None                      # it compiled, it did not reuse the cache
    assert again.config.read_bytes() == built.config.read_bytes()
    assert again.vmlinux.read_bytes() == built.vmlinux.read_bytes()
    assert again.path.read_bytes() == built.path.read_bytes()
