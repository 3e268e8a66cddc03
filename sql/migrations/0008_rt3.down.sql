-- 0007 down: set_identity as 0006 made it.

-- A verified token's role and claims for the rest of the transaction (what PostgREST sets).
-- The client and the gateway check the role against their allow-list first; this refuses,
-- whatever they were told, what no token may become: the login role itself (that is
-- `SET ROLE NONE` in disguise), a role that does not exist, and a role that is a superuser
-- or can make itself one or act as one (CREATEROLE, REPLICATION, BYPASSRLS, or a member of a
-- predefined role that reads or writes the server's files, runs programs or reads and writes
-- all data).
CREATE OR REPLACE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls
           OR EXISTS (SELECT FROM unnest(ARRAY['pg_execute_server_program',
                          'pg_read_server_files', 'pg_write_server_files',
                          'pg_read_all_data', 'pg_write_all_data']) AS p (name)
                      WHERE pg_has_role(a.oid, p.name, 'MEMBER')) AS powerful
    INTO r FROM pg_roles a WHERE a.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF r.powerful OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser or a role with '
                         'superuser-like powers, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;
