ALTER FUNCTION pyfuncs.realtime_capture() RESET lc_monetary;
ALTER FUNCTION pyfuncs.realtime_capture() RESET quote_all_identifiers;
ALTER FUNCTION pyfuncs.realtime_wal_batch(integer) RESET lc_monetary;
ALTER FUNCTION pyfuncs.realtime_wal_batch(integer) RESET quote_all_identifiers;
