-- Realistic volume, generated inside the database in one statement per table:
-- current_setting('seed.students') students (the demo uses 50,000), 20 managers, 4 courses of 5 lessons each, and a
-- progress row per student and lesson (1,000,000 rows at the default), spread over 30 days.

SELECT setseed(0.42);
-- The generated rows are consistent by construction, so the load skips the per-row foreign
-- key triggers (a standard bulk-load setting, superuser only); constraints and RLS stay on.
SET session_replication_role = replica;

INSERT INTO courses SELECT c, 'Course ' || c FROM generate_series(1, 4) c;
INSERT INTO lessons SELECT l, (l - 1) / 5 + 1, 'Lesson ' || l FROM generate_series(1, 20) l;

CREATE TEMP TABLE seed_people AS
SELECT md5('person' || n)::uuid AS id, n,
       CASE WHEN n <= 20 THEN 'manager' ELSE 'student' END AS role
FROM generate_series(1, current_setting('seed.students')::int + 20) n;

INSERT INTO auth.users (id, email, created_at)
SELECT id, role || n || '@academy.test', now() - interval '90 days' FROM seed_people;

INSERT INTO users (id, email, full_name, role, onboarding_completed, created_at)
SELECT id, role || n || '@academy.test', initcap(role) || ' ' || n, role, true,
       now() - interval '90 days'
FROM seed_people;

INSERT INTO profiles (id, level, xp, current_streak)
SELECT id, 1 + (random() * 20)::int, (random() * 5000)::int, (random() * 30)::int
FROM seed_people WHERE role = 'student';

INSERT INTO course_assignments (user_id, course_id)
SELECT id, 1 + n % 4 FROM seed_people WHERE role = 'student';

-- one row per student and lesson; about 60% completed, activity over the last 30 days
INSERT INTO student_progress (user_id, lesson_id, is_completed, watch_time_seconds, completed_at, updated_at)
SELECT user_id, lesson_id, done, (random() * 1800)::int, CASE WHEN done THEN at END, at
FROM (  -- volatile columns keep this subquery unflattened: one draw per row, used twice
    SELECT p.id AS user_id, l.id AS lesson_id, random() < 0.6 AS done,
           now() - random() * interval '30 days' AS at
    FROM seed_people p CROSS JOIN lessons l
    WHERE p.role = 'student'
) g
ORDER BY user_id, lesson_id;  -- key order: the primary key index is built by appending

-- every student bought the tripwire from one of the 20 managers
INSERT INTO tripwire_users (user_id, full_name, email, granted_by, status, payment_amount, created_at)
SELECT s.id, 'Student ' || s.n, 'student' || s.n || '@academy.test',
       md5('person' || (1 + s.n % 20))::uuid,
       (ARRAY['active', 'active', 'active', 'inactive', 'refunded'])[1 + (random() * 4)::int],
       (ARRAY[4900, 9900, 14900])[1 + (random() * 2)::int] / 100.0,
       now() - random() * interval '60 days'
FROM seed_people s WHERE s.role = 'student';

INSERT INTO sales_activity_log (manager_id, action_type, student_id, created_at)
SELECT granted_by, 'student_created', user_id, created_at FROM tripwire_users;

DROP TABLE seed_people;
RESET session_replication_role;
