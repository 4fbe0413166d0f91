"""CHAOS-class TXT names, answered as NSD answers them.

``id.server`` and ``hostname.bind`` give the identity (by default the
appliance's address), ``version.server`` and ``version.bind`` the project's
version. As in NSD: TXT or ANY only, TTL 0, no AA; every other CHAOS question
is REFUSED with Extended DNS Error 21 (Not Supported), and so are the version
names when the version is hidden (``--hide-version``, NSD's hide-version).
"""
from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from unikernel.process import Answer, Endpoint, Process

IDENTITY_NAMES = (dns.name.from_text("id.server."), dns.name.from_text("hostname.bind."))
VERSION_NAMES = (dns.name.from_text("version.server."), dns.name.from_text("version.bind."))
EDE_NOT_SUPPORTED = dns.edns.EDECode.NOT_SUPPORTED     # 21


def chaos_process(*, identity: str, version: str | None) -> Process:
    """The CHAOS names' process; ``version=None`` hides the version."""
    texts: dict[dns.name.Name, str] = dict.fromkeys(IDENTITY_NAMES, identity)
    if version is not None:
        texts.update(dict.fromkeys(VERSION_NAMES, version))

    async def process(*, src: Endpoint, dst: Endpoint, query: dns.message.Message) -> Answer | None:
        if len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.CH:
            return None
        question = query.question[0]
        text = texts.get(question.name)     # dnspython names compare case-insensitively
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.AA
        if text is None or question.rdtype not in (dns.rdatatype.TXT, dns.rdatatype.ANY):
            response.set_rcode(dns.rcode.REFUSED)
            if query.edns >= 0:
                response.use_edns(0, options=[dns.edns.EDEOption(EDE_NOT_SUPPORTED)])
            return Answer(response, final=True, static=True)
        rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.CH, dns.rdatatype.TXT, [text.encode()[:255]])
        response.answer.append(dns.rrset.from_rdata(question.name, 0, rdata))
        return Answer(response, final=True, static=True)

    return process
