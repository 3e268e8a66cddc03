-- 0003 down.
DROP TABLE pyfuncs.realtime_audit;
