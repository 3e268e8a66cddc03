-- 0023 down: set_identity as 0008 made it.

CREATE OR REPLACE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT EXISTS (SELECT FROM pg_roles p
                   WHERE (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
                          OR p.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                           'pg_write_server_files', 'pg_read_all_data',
                                           'pg_write_all_data'))
                     AND pg_has_role(a.oid, p.oid, 'MEMBER')) AS powerful
    INTO r FROM pg_roles a WHERE a.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF r.powerful OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser or a role with '
                         'superuser-like powers or a member of one, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;
