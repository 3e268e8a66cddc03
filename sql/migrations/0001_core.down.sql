-- 0001 down: removes the core schema and everything deployed into its catalog records.
-- Deployed routines in other schemas are left alone: they belong to the application.
DROP SCHEMA pyfuncs CASCADE;
