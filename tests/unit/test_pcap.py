"""The pcap tee writes a file that scapy and tcpdump both read."""
import shutil
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from netstack.link.pcap import PcapTee
from netstack.stack import Stack
from tests.stackutil import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, CaptureLink, Clock


def _trace(tmp_path):
    path = tmp_path / "trace.pcap"
    inner = CaptureLink()
    tee = PcapTee(inner, str(path))
    stack = Stack(tee, f"{OUR_IP}/24", mac=OUR_MAC, clock=Clock())
    tee.attach(None, stack.receive)
    inner.receive(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP)))
    stack.udp.sendto(b"traced", 53, stack.address - 1, 4000)
    tee.close()
    return path


def test_scapy_reads_the_trace(tmp_path):
    packets = rdpcap(str(_trace(tmp_path)))
    assert len(packets) == 3        # request in, reply out, datagram out
    assert packets[0][ARP].op == 1 and packets[1][ARP].op == 2
    assert bytes(packets[2][UDP].payload) == b"traced" and packets[2][IP].dst == PEER_IP


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_tcpdump_reads_the_trace(tmp_path):
    out = subprocess.run(["tcpdump", "-nr", str(_trace(tmp_path))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ARP, Request who-has 192.0.2.2" in out.stdout and "192.0.2.2.53 > 192.0.2.1.4000" in out.stdout
