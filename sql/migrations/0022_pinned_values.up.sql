-- money is written with lc_monetary and reg* values with quote_all_identifiers, which any
-- session may set: a writer's made the change log's text of such values in trigger mode (a
-- reg* key the gateway then could not match: its changes were never delivered), the
-- consumer's in wal mode (the other output settings are pinned already)
ALTER FUNCTION pyfuncs.realtime_capture() SET lc_monetary = 'C';
ALTER FUNCTION pyfuncs.realtime_capture() SET quote_all_identifiers = off;
ALTER FUNCTION pyfuncs.realtime_wal_batch(integer) SET lc_monetary = 'C';
ALTER FUNCTION pyfuncs.realtime_wal_batch(integer) SET quote_all_identifiers = off;
