-- Cluster-wide roles of the academy (idempotent): two application roles and a login role in
-- the PostgREST "authenticator" pattern, which switches to them per transaction from a JWT.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'student') THEN
        CREATE ROLE student NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'manager') THEN
        CREATE ROLE manager NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
END
$$;
GRANT student, manager TO authenticator;
