"""The TCP state machine as data (after mirage-tcpip's ``state.ml``).

``TRANSITIONS`` maps (state, event) to the next state; the connection's input
path decides which event a segment is and the table says where it leads, so
no state has a hand-copied handler of its own.
"""
from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"


class Event(enum.Enum):
    OPEN_ACTIVE = "open"          # the application calls connect()
    RECV_SYN = "syn"              # a SYN without ACK
    RECV_SYN_ACK = "syn_ack"      # the answer to our SYN
    RECV_ACK_OF_SYN = "ack_syn"   # the ACK that completes a passive open
    CLOSE = "close"               # the application calls close()
    RECV_FIN = "fin"
    RECV_ACK_OF_FIN = "ack_fin"
    TIMEOUT = "timeout"           # TIME_WAIT over, retries exhausted, or idle
    RESET = "reset"               # an acceptable RST arrived, or we aborted


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CLOSED, E.OPEN_ACTIVE): S.SYN_SENT,
    (S.LISTEN, E.RECV_SYN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.RECV_SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, E.RECV_SYN): S.SYN_RECEIVED,          # simultaneous open
    (S.SYN_SENT, E.CLOSE): S.CLOSED,
    (S.SYN_RECEIVED, E.RECV_ACK_OF_SYN): S.ESTABLISHED,
    (S.SYN_RECEIVED, E.CLOSE): S.FIN_WAIT_1,
    (S.SYN_RECEIVED, E.RECV_FIN): S.CLOSE_WAIT,
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.RECV_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, E.RECV_ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.RECV_FIN): S.CLOSING,
    (S.FIN_WAIT_2, E.RECV_FIN): S.TIME_WAIT,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.CLOSING, E.RECV_ACK_OF_FIN): S.TIME_WAIT,
    (S.LAST_ACK, E.RECV_ACK_OF_FIN): S.CLOSED,
    (S.TIME_WAIT, E.TIMEOUT): S.CLOSED,
}
# Any state may be reset or time out into CLOSED.
for _state in State:
    TRANSITIONS.setdefault((_state, E.RESET), S.CLOSED)
    TRANSITIONS.setdefault((_state, E.TIMEOUT), S.CLOSED)
del _state

SYNCHRONIZED = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING,
                          S.LAST_ACK, S.TIME_WAIT})
RECEIVES_DATA = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
SENDS_DATA = frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK})
ACCEPTS_SEND = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT})


