"""A userspace TCP/IP stack: Ethernet, ARP, IPv4, ICMP, UDP and TCP.

Frames come from a link (netstack.link); netstack.stack wires the layers on one
asyncio loop. Protocol modules do no I/O and take the time as an argument.
Nothing here knows about DNS.
"""
