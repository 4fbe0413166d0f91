"""DNS's own replication: zone transfers out (AXFR, IXFR), NOTIFY, TSIG."""
