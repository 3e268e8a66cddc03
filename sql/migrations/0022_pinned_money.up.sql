-- money is written with lc_monetary, which any session may set: a writer's made the change
-- log's text of its money values in trigger mode, the consumer's in wal mode (the other
-- output settings are pinned already)
ALTER FUNCTION pyfuncs.realtime_capture() SET lc_monetary = 'C';
ALTER FUNCTION pyfuncs.realtime_wal_batch(integer) SET lc_monetary = 'C';
