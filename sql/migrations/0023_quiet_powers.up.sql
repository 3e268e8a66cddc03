-- 0023 up: a token may not act as a role that reaches other sessions or the whole cluster
-- either (README "Security model"): members of pg_signal_backend (cancel and terminate other
-- roles' sessions), pg_monitor, pg_read_all_stats, pg_read_all_settings and
-- pg_stat_scan_tables (other sessions' queries, every setting), pg_checkpoint, and
-- pg_database_owner (the database's owner) are refused as the roles 0008 refuses are.

CREATE OR REPLACE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT EXISTS (SELECT FROM pg_roles p
                   WHERE (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
                          OR p.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                           'pg_write_server_files', 'pg_read_all_data',
                                           'pg_write_all_data', 'pg_signal_backend',
                                           'pg_monitor', 'pg_read_all_stats',
                                           'pg_read_all_settings', 'pg_stat_scan_tables',
                                           'pg_checkpoint', 'pg_database_owner'))
                     AND pg_has_role(a.oid, p.oid, 'MEMBER')) AS powerful
    INTO r FROM pg_roles a WHERE a.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF r.powerful OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser, a role with '
                         'powers over the server, other sessions or all data, or a member '
                         'of one, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;
