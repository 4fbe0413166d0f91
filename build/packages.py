"""Everything the image is made of that is not in this repository, pinned in one place.

Debian bookworm packages are fetched with ``apt-get download NAME=VERSION``
(from the host's configured mirrors) and checked against the SHA-256 below;
nothing is installed on the host. dnspython and h11 come from PyPI as wheels. All of
it is cached in ``CACHE`` (outside the repository), so a second build makes no
network request.

To move to newer packages: ``apt-cache policy NAME`` for the candidate, update
the version, run ``make image`` once; it prints the new SHA-256 to paste here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("DNS_APPLIANCE_CACHE", Path.home() / ".cache" / "dns-appliance"))


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    sha256: str
    arch: str = "amd64"                  # "all" for packages of data only

    @property
    def filename(self) -> str:
        # apt-get download writes the epoch's ":" as "%3a"
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


# The appliance's kernel is built from this source (build/kernel.py, configured
# by build/kernel.config); the tarball inside the .deb is what is compiled.
KERNEL_SOURCE = Deb("linux-source-6.1", "6.1.192-3",
                    "5259c57ca92092da39bd2ea803046da0e3c28f2b6a11ea20f6297468188ceb67", arch="all")

# Debian's stock kernel, the fallback (`make image KERNEL=debian`).
KERNEL_RELEASE = "6.1.0-57-amd64"
KERNEL = Deb("linux-image-6.1.0-57-amd64-unsigned", "6.1.192-3",
             "f43a8dbe0b318a5491880233bb20982dc9cc8ef103dd361cd56499eea15c5191")

PYTHON = "python3.11"
USERSPACE = (
    Deb("python3.11-minimal", "3.11.2-6+deb12u9",
        "b5f855ab922dfcd5d1a3223b2118c3dae13ffc7751b0cd5dc24740386323a33a"),
    Deb("libpython3.11-minimal", "3.11.2-6+deb12u9",
        "69f41cfa3f4ba17284e538f843069d7529c53c207d2ae17a5b02785944870e33"),
    Deb("libpython3.11-stdlib", "3.11.2-6+deb12u9",
        "10f13e000ee757f5f2d2d3569f9e30546214a0c850acd78695feae373bfa3e53"),
    Deb("libc6", "2.36-9+deb12u14",
        "ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf"),
    Deb("zlib1g", "1:1.2.13.dfsg-1",
        "d7dd1d1411fedf27f5e27650a6eff20ef294077b568f4c8c5e51466dc7c08ce4"),
    Deb("libffi8", "3.4.4-1",
        "6d9f6c25c30efccce6d4bceaa48ea86c329a3432abb360a141f76ac223a4c34a"),
    # _ssl (DNS over TLS both ways) needs libssl.so.3 and libcrypto.so.3, and
    # DNSSEC's signature checks call libcrypto.so.3 through ctypes (with libffi8);
    # _hashlib stays out (make_image.LEFT_OUT). A library an extension module
    # needs but no pin provides fails the build.
    Deb("libssl3", "3.0.22-1~deb12u2",
        "cb4784740daa9b3b0eaea2b444bbefa686794afbbf3d678d238c1fd9875f2efd"),
    # Mozilla's roots as Debian ships them; the build concatenates them into
    # CA_BUNDLE (what update-ca-certificates would make), the default --tls-ca.
    Deb("ca-certificates", "20250419~deb12u2",
        "b9f76b5271a7ac373fd5e7e1b5b826a71ddd702b42a0d104955ecb1acfffc94b", arch="all"),
)
# Not in the image: Debian's objects of python3.11 (the same build as
# python3.11-minimal's), its table of built-in modules and its headers, which
# build/relink.py links again without the modules the appliance never imports.
PYTHON_DEV = Deb("libpython3.11-dev", "3.11.2-6+deb12u9",
                 "e9b4cc9172df9536f6bd637a69886ccccd18e7c648a89bed565a748affeef6d6")
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
CA_SOURCES = "usr/share/ca-certificates/mozilla"


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str


DNSPYTHON = Wheel("dnspython", "2.9.2", "dnspython-2.9.2-py3-none-any.whl",
                  "af15f7d385a6ae2fb35a796fde2138004c8c42c7389090e2addc83e3b3340fd8")
# HTTP/1.1 for the operator's port (/metrics, the dashboard), pure Python
H11 = Wheel("h11", "0.16.0", "h11-0.16.0-py3-none-any.whl",
            "63cf8bbe7522de3bf65932fda1d9c2772064ffb3dae62d55932da54b31cb6c86")

# The NIC drivers PID 1 loads with Debian's kernel (the appliance's has them
# built in), by module name (virtio_pci is the bus driver virtio_net needs to
# find its device, yet not a "depends" of it); their dependencies are read
# from each module's ``depends=`` at build time (the .deb ships no modules.dep).
# virtio-rng feeds the kernel RNG when QEMU offers one (-device virtio-rng-pci).
NIC_MODULES = ("virtio_pci", "virtio_net", "xen-netfront", "virtio-rng")

# Fixed time stamp for every file in the image (reproducible builds).
SOURCE_DATE_EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))

# The initramfs compressor and the command that reverses it (the tests read the
# image with it). zstd at level 19: its window is 8 MiB, which the kernel's
# unzstd allocates within 64 MB of guest memory. Under TCG the kernel's
# decompressor runs emulated, and xz's is slow there: on the same 22.3 MB cpio
# (`python -m bench boot`, interleaved, medians of 3, load ~1.2) xz --x86
# unpacked in 1.35 s and zstd in 0.52 s, first answer 3.46 s against 2.82 s.
# zstd is 0.76 MB larger (6.93 against 6.17 MB); build/relink.py's interpreter
# and a zstd kernel pay for that within issue 17's 8 MB. Single-threaded, so
# the output depends only on the input (and the zstd version).
COMPRESSOR = ("zstd", "-19", "-T1", "-q", "-c")
DECOMPRESSOR = ("zstd", "-dc")
