-- The audit log: one row per trigger or cancel attempt, allowed or denied, in a hash chain.
-- Every column but outcome/outcome_at is immutable and covered by `hash`, which is
-- sha256(canonical JSON of those columns, including prev_hash). Times are fixed-width RFC 3339
-- TEXT on both backends, so a row hashes the same after a round trip through either database.
CREATE TABLE ci_audit (
    seq             INTEGER NOT NULL PRIMARY KEY,  -- position in the chain, from 1
    at              TEXT NOT NULL,                 -- YYYY-MM-DDTHH:MM:SS.ffffffZ
    tenant_id       TEXT NOT NULL,
    caller          TEXT NOT NULL,                 -- subject, or 'anonymous'
    auth_method     TEXT NOT NULL,                 -- jwt | api_token | mtls | none
    action          TEXT NOT NULL,                 -- trigger | cancel
    job_id          TEXT,
    run_id          TEXT,
    parameters      TEXT NOT NULL,                 -- JSON object, secret-looking values redacted
    idempotency_key TEXT,
    decision        TEXT NOT NULL,                 -- allowed | denied
    reason          TEXT,                          -- why denied (a stable code)
    request_id      TEXT,
    source_addr     TEXT,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    outcome         TEXT,                          -- the upstream outcome; written once, not chained
    outcome_at      TEXT
);
CREATE INDEX ci_audit_by_caller ON ci_audit (caller, seq);
CREATE INDEX ci_audit_by_job ON ci_audit (job_id, seq);
CREATE INDEX ci_audit_by_run ON ci_audit (run_id);

-- The head of the chain: one row. Every append updates it first, which serializes appends
-- (a row lock on PostgreSQL, the write lock on SQLite) so two writers never share a prev_hash.
CREATE TABLE ci_audit_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO ci_audit_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
