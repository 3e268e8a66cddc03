-- 0003 up: the realtime gateway's audit trail.
-- What the gateway saw of its clients (README "Realtime: the gateway"): connections, auth
-- failures, subscriptions and why each connection ended. Written by the gateway in batches.
CREATE TABLE pyfuncs.realtime_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    event text NOT NULL CHECK (event IN ('connect', 'auth_failed', 'subscribe', 'unsubscribe',
                                         'subscribe_failed', 'token_expired', 'rate_limited',
                                         'disconnect')),
    connection text NOT NULL,
    role text,
    subject text,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX realtime_audit_at ON pyfuncs.realtime_audit (at);
