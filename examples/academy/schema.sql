-- The academy example from the brief: students, their progress, and a sales team.
-- Row-level security uses the PostgREST/Supabase conventions: the caller's role plus
-- pyfuncs.current_user_id() (the JWT's `sub`), so the same policies work behind PostgREST.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA IF NOT EXISTS auth;
CREATE TABLE auth.users (                  -- what Supabase's auth.admin.createUser made
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text NOT NULL UNIQUE,
    encrypted_password text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id uuid PRIMARY KEY REFERENCES auth.users (id),
    email text NOT NULL UNIQUE,
    full_name text NOT NULL,
    role text NOT NULL CHECK (role IN ('student', 'manager', 'admin')),
    onboarding_completed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE profiles (
    id uuid PRIMARY KEY REFERENCES users (id),
    level integer NOT NULL DEFAULT 1,
    xp integer NOT NULL DEFAULT 0,
    current_streak integer NOT NULL DEFAULT 0,
    phone text CHECK (phone ~ '^\+?[0-9 ]{7,20}$'),
    is_active boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE courses (id integer PRIMARY KEY, title text NOT NULL);
CREATE TABLE lessons (
    id integer PRIMARY KEY,
    course_id integer NOT NULL REFERENCES courses (id),
    title text NOT NULL
);

CREATE TABLE course_assignments (
    user_id uuid NOT NULL REFERENCES users (id),
    course_id integer NOT NULL REFERENCES courses (id),
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, course_id)
);

CREATE TABLE student_progress (
    user_id uuid NOT NULL REFERENCES users (id),
    lesson_id integer NOT NULL REFERENCES lessons (id),
    is_completed boolean NOT NULL DEFAULT false,
    watch_time_seconds integer NOT NULL DEFAULT 0,
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, lesson_id)
);
CREATE INDEX ON student_progress (updated_at);   -- dashboards look at recent activity
CREATE INDEX ON student_progress (user_id) WHERE is_completed;   -- completed-lesson counts

CREATE TABLE tripwire_users (
    user_id uuid PRIMARY KEY REFERENCES users (id),
    full_name text NOT NULL,
    email text NOT NULL,
    granted_by uuid NOT NULL REFERENCES users (id),   -- the manager who sold it
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'refunded')),
    payment_amount numeric(10, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON tripwire_users (granted_by);

CREATE TABLE sales_activity_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    manager_id uuid NOT NULL REFERENCES users (id),
    action_type text NOT NULL,
    student_id uuid REFERENCES users (id),
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON sales_activity_log (manager_id, created_at);

-- Privileges: students read their own data; managers run the sales side.
GRANT USAGE ON SCHEMA auth TO manager;
GRANT SELECT, INSERT ON auth.users TO manager;
GRANT SELECT ON users, profiles, courses, lessons, course_assignments, student_progress TO student, manager;
GRANT UPDATE (xp, level, current_streak, updated_at) ON profiles TO student;
GRANT INSERT, UPDATE ON student_progress TO student;
GRANT INSERT ON users, profiles, course_assignments TO manager;
GRANT SELECT, INSERT, UPDATE ON tripwire_users, sales_activity_log TO manager;
GRANT SELECT ON tripwire_users TO student;

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE student_progress ENABLE ROW LEVEL SECURITY;
ALTER TABLE course_assignments ENABLE ROW LEVEL SECURITY;
ALTER TABLE tripwire_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE sales_activity_log ENABLE ROW LEVEL SECURITY;

CREATE POLICY own_user ON users FOR SELECT TO student USING (id = pyfuncs.current_user_id());
CREATE POLICY team_users ON users FOR ALL TO manager USING (true);
CREATE POLICY own_profile ON profiles FOR ALL TO student USING (id = pyfuncs.current_user_id());
CREATE POLICY team_profiles ON profiles FOR ALL TO manager USING (true);
CREATE POLICY own_progress ON student_progress FOR ALL TO student
    USING (user_id = pyfuncs.current_user_id());
CREATE POLICY team_progress ON student_progress FOR SELECT TO manager USING (true);
CREATE POLICY own_assignments ON course_assignments FOR SELECT TO student
    USING (user_id = pyfuncs.current_user_id());
CREATE POLICY team_assignments ON course_assignments FOR ALL TO manager USING (true);
CREATE POLICY own_purchase ON tripwire_users FOR SELECT TO student
    USING (user_id = pyfuncs.current_user_id());
-- Managers see the whole team's sales (the leaderboard) but only sell in their own name.
CREATE POLICY team_sales ON tripwire_users FOR SELECT TO manager USING (true);
CREATE POLICY own_sales ON tripwire_users FOR INSERT TO manager
    WITH CHECK (granted_by = pyfuncs.current_user_id());
CREATE POLICY own_sales_update ON tripwire_users FOR UPDATE TO manager
    USING (granted_by = pyfuncs.current_user_id());
CREATE POLICY own_log ON sales_activity_log FOR ALL TO manager
    USING (manager_id = pyfuncs.current_user_id())
    WITH CHECK (manager_id = pyfuncs.current_user_id());
