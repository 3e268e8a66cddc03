-- 0019 up: compiled code is stored out of line but not compressed. Every new connection's
-- first routine call reads the runtime's code (about 500 kB) and its routine module's:
-- undoing pglz took 0.7 ms of that call, more than reading the bytes themselves.
ALTER TABLE pyfuncs.runtime_module ALTER COLUMN code SET STORAGE EXTERNAL;
ALTER TABLE pyfuncs.routine_code ALTER COLUMN code SET STORAGE EXTERNAL;
-- The rows stored already are compressed: written again (a value's own bytes, unchanged,
-- would keep its compressed copy), they are stored as the column now says.
UPDATE pyfuncs.runtime_module SET code = code || ''::bytea WHERE code IS NOT NULL;
UPDATE pyfuncs.routine_code SET code = code || ''::bytea;
