"""bench/boot.py reads a boot's phases from the console as the kernel
(printk.time=1) and PID 1 (build/init.py's log) print them."""
from bench.boot import phases

CONSOLE = b"""\
[    0.000000] Linux version 6.1.192 (dns@appliance) #1 Tue Nov 14 22:13:20 UTC 2023
[    0.402294] Unpacking initramfs...
[    0.819310] serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A
[    2.124595] Freeing initrd memory: 5840K
[    2.240220] Run /init as init process
[init 2.78] net: the kernel has no IPv6 to turn off
[init 2.79] rng: ready
[    2.801000] virtio_net virtio1 eth0: renamed
[init 3.86] cmdline: --ipv4 192.0.2.2/24 --ipv4-gateway 192.0.2.1
[init 4.38] ready: DNS on 192.0.2.2:53 (tap eth0, zones: data/d1.signpo.st.zone), metrics on :9153
[init 9.00] cmdline: a second one is not the first
"""


def test_phases_are_read_from_the_kernels_and_pid_1s_lines():
    assert phases(CONSOLE) == {"unpack": 0.402294, "unpacked": 2.124595, "init": 2.24022,
                               "pid1": 2.78, "imports": 3.86, "ready": 4.38}


def test_a_phase_missing_from_the_console_is_left_out():
    assert phases(b"[    1.000000] Run /init as init process\r\n") == {"init": 1.0}
    # a kernel that has a RAM disk words the start of the unpacking otherwise
    assert phases(b"[    0.5] Trying to unpack rootfs image as initramfs...\r\n") == {"unpack": 0.5}
