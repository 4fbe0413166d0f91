"""The image's ``unicodedata``: present, so that what imports it at its top
still imports, and empty, so that every lookup fails with a reason.

CPython's unicodedata is 1.1 MB of Unicode tables built into the
interpreter, and build/relink.py leaves it out of the image's python3.11. Only
IDNA's nameprep reads them in the appliance, yet ``encodings.idna`` and
``stringprep`` import unicodedata as they load, and dnspython's ``dns.name``
imports ``encodings.idna``: without this module nothing could parse a name.

In the image, then, a name given as text with non-ASCII letters (a zone file,
a hosts file, a flag) is an error that says what to write instead: its
A-label (``xn--bcher-kva.example`` for ``bücher.example``), which is what goes
on the wire anyway. Names that arrive on the wire are bytes and never need
the tables. The error is a ValueError, as the loaders report a bad name, and
not a UnicodeError, which dnspython would turn into "label too long".
"""


class UnicodeTablesLeftOut(ValueError):
    pass


def _left_out(name: str) -> UnicodeTablesLeftOut:
    return UnicodeTablesLeftOut(
        f"unicodedata.{name}: this appliance image leaves Unicode's tables out, so a name with "
        f"non-ASCII letters must be written as its A-label (xn--...)")


class _Database:
    """What ``unicodedata.ucd_3_2_0`` is (stringprep and encodings.idna take it
    at import): every lookup fails."""

    unidata_version = "3.2.0"       # which stringprep checks as it loads

    def __getattr__(self, name: str) -> object:
        raise _left_out(f"ucd_3_2_0.{name}")


ucd_3_2_0 = _Database()
# the version of the tables left out (Python 3.11's), which stringprep checks as it loads
unidata_version = "14.0.0"


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)          # what import machinery and copy probe for
    raise _left_out(name)
