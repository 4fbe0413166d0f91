"""TCP (RFC 9293), split as mirage-tcpip splits it; no module here does I/O.

segment      the segment codec: parse and emit, options (MSS, window scale)
sequence     32-bit sequence arithmetic
state        the state machine as a (state, event) transition table
config       TcpConfig: sizes, timers, bounds
rto          the retransmission timeout estimate and its backoff (RFC 6298)
reassembly   out-of-order segments, bounded, until the gap fills
connection   one connection: windows, output, input, its timers
layer        the connections of one address: listen, SYN cookies, dispatch, bounds
stream       asyncio reader and writer over a connection
"""
