"""The seed's API: compose's fall-through rules and processor_of_process,
with fake processes that record who was asked."""
import asyncio
import ipaddress

import dns.message
import dns.rcode
import pytest

from unikernel.process import Answer, compose, processor_of_process

SRC = (ipaddress.IPv4Address("192.0.2.1"), 5353)
DST = (ipaddress.IPv4Address("192.0.2.2"), 53)


def query(name="www.example.", rdtype="A"):
    return dns.message.make_query(name, rdtype)


def answering(rcode, *, final=False, log=None, label=""):
    async def process(*, src, dst, query):
        if log is not None:
            log.append(label)
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return Answer(response, final=final)
    return process


def silent(log=None, label=""):
    async def process(*, src, dst, query):
        if log is not None:
            log.append(label)
        return None
    return process


def run(process, q=None):
    return asyncio.run(process(src=SRC, dst=DST, query=q or query()))


def test_first_noerror_answer_wins_and_backup_is_not_asked():
    log = []
    answer = run(compose(answering(dns.rcode.NOERROR, log=log, label="p"),
                         answering(dns.rcode.NOERROR, log=log, label="backup")))
    assert answer.message.rcode() == dns.rcode.NOERROR
    assert log == ["p"]


def test_no_answer_falls_through_to_backup():
    log = []
    answer = run(compose(silent(log, "p"), answering(dns.rcode.NOERROR, log=log, label="backup")))
    assert answer is not None and log == ["p", "backup"]


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_non_noerror_falls_through_unless_final(rcode):
    log = []
    answer = run(compose(answering(rcode, log=log, label="p"),
                         answering(dns.rcode.NOERROR, log=log, label="backup")))
    assert answer.message.rcode() == dns.rcode.NOERROR
    assert log == ["p", "backup"]


def test_final_nxdomain_stops_the_chain():
    log = []
    answer = run(compose(answering(dns.rcode.NXDOMAIN, final=True, log=log, label="zone"),
                         answering(dns.rcode.NOERROR, log=log, label="forwarder")))
    assert answer.message.rcode() == dns.rcode.NXDOMAIN and answer.final
    assert log == ["zone"]


def test_last_answer_is_returned_whatever_its_rcode():
    answer = run(compose(silent(), answering(dns.rcode.SERVFAIL)))
    assert answer.message.rcode() == dns.rcode.SERVFAIL


def test_the_last_process_decides_when_the_earlier_ones_fell_through():
    # p answered SERVFAIL (not final) and the backup had nothing: compose gives
    # the backup's outcome, None, which the server turns into REFUSED
    assert run(compose(answering(dns.rcode.SERVFAIL), silent())) is None


def test_nobody_answers():
    assert run(compose(silent(), silent(), silent())) is None


def test_compose_nests():
    log = []
    inner = compose(silent(log, "a"), answering(dns.rcode.REFUSED, log=log, label="b"))
    outer = compose(inner, answering(dns.rcode.NOERROR, log=log, label="c"))
    assert run(outer).message.rcode() == dns.rcode.NOERROR
    assert log == ["a", "b", "c"]


def test_processor_of_process_passes_endpoints_and_query():
    seen = {}

    async def process(*, src, dst, query):
        seen.update(src=src, dst=dst, query=query)
        return None

    processor = processor_of_process(process)
    q = query()
    assert asyncio.run(processor(SRC, DST, q)) is None
    assert seen == {"src": SRC, "dst": DST, "query": q}
    assert processor.process is process


def test_processor_lets_exceptions_through_for_the_server_to_turn_into_servfail():
    async def broken(*, src, dst, query):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        asyncio.run(processor_of_process(broken)(SRC, DST, query()))


def test_memory_budgets_follow_the_machine(tmp_path):
    from unikernel.main import MAX_BUDGET, available_memory, memory_budgets
    from unikernel.transfer.secondary import MAX_TRANSFER_RECORDS, records_within

    def shared(budgets):                      # what the tables network input fills share
        return budgets["static"] + budgets["cache"] + budgets["tcp"]
    big = memory_budgets(8 << 30)
    assert shared(big) <= MAX_BUDGET and big["cache"] > big["static"] > big["tcp"]
    small = memory_budgets(60 << 20)          # what a 128 MiB VM has left after boot
    assert shared(small) <= 0.4 * (60 << 20)
    assert memory_budgets(None) == memory_budgets(1 << 40)
    # secondary zones: a fifth of what is available, as records (a 128 MiB
    # VM holds about 12,000 transferred records, a big host the fixed bound)
    assert records_within(small["secondary"], 1) == (60 << 20) // 5 // 1024
    assert records_within(small["secondary"], 3) == (60 << 20) // 5 // 1024 // 3
    assert records_within(big["secondary"], 1) == MAX_TRANSFER_RECORDS == records_within(memory_budgets(None)["secondary"], 1)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  131072 kB\nMemFree:  50000 kB\nMemAvailable:   61440 kB\n")
    assert available_memory(str(meminfo)) == 61440 * 1024
    assert available_memory(str(tmp_path / "missing")) is None


def test_zone_and_hosts_files_are_read_once_from_check_to_serving(monkeypatch):
    """main.check() read every zone and hosts file to find errors, then
    resolution_chain() read them all again: the chain now serves what check
    loaded."""
    from tests.unit.fake_stack import FakeStack
    from unikernel import main
    from unikernel.config import Appliance
    from unikernel.sources import zone

    reads = {"zones": 0, "hosts": 0}
    load_zones, load_hosts = zone.load_zones, main.load_hosts

    def counting_zones(paths):
        reads["zones"] += 1
        return load_zones(paths)

    def counting_hosts(paths):
        reads["hosts"] += 1
        return load_hosts(paths)

    monkeypatch.setattr(zone, "load_zones", counting_zones)
    monkeypatch.setattr(main, "load_hosts", counting_hosts)
    appliance = Appliance(zones=["data/d1.signpo.st.zone"], hosts=["data/hosts"], forward=[])
    loaded = main.check(appliance)
    chain = main.resolution_chain(appliance, FakeStack(), loaded)
    answer = run(chain.process, query("ns0.d1.signpo.st."))
    assert reads == {"zones": 1, "hosts": 1}
    assert answer.message.rcode() == dns.rcode.NOERROR and answer.message.answer
