-- 0019 down: compiled code is compressed again (as rows are written from now on).
ALTER TABLE pyfuncs.runtime_module ALTER COLUMN code SET STORAGE EXTENDED;
ALTER TABLE pyfuncs.routine_code ALTER COLUMN code SET STORAGE EXTENDED;
