"""A tiny upstream resolver for tests that forward, run in the test's namespace:
``ns.popen(sys.executable, "-c", TINY_UPSTREAM, ADDRESS)`` prints ``listening``.

www.example.org A 198.51.100.9, NXDOMAIN for the rest (an upstream answering
every name would be taken, rightly, for one that rewrites NXDOMAIN).
"""

TINY_UPSTREAM = """
import socket, sys
import dns.message, dns.rrset
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    try:
        query = dns.message.from_wire(data)
    except Exception:
        continue
    reply = dns.message.make_response(query)
    q = query.question[0]
    if q.name == dns.name.from_text("www.example.org") and q.rdtype == 1:
        reply.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", "198.51.100.9"))
    else:
        reply.set_rcode(3)
    s.sendto(reply.to_wire(), peer)
"""
