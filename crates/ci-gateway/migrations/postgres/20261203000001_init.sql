-- The job catalog, synced from the configuration at start-up.
CREATE TABLE ci_job (
    tenant_id     TEXT        NOT NULL DEFAULT 'default',
    job_id        TEXT        NOT NULL,
    project       TEXT        NOT NULL,
    display_name  TEXT        NOT NULL,
    environment   TEXT,
    provider_id   TEXT        NOT NULL,
    provider_kind TEXT        NOT NULL,
    provider_ref  JSONB       NOT NULL,
    active        BOOLEAN     NOT NULL DEFAULT TRUE,  -- false once removed from the configuration
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, job_id)
);

-- One execution of a job.
CREATE TABLE ci_run (
    run_id              TEXT        NOT NULL PRIMARY KEY,
    tenant_id           TEXT        NOT NULL DEFAULT 'default',
    job_id              TEXT        NOT NULL,
    status              TEXT        NOT NULL,
    provider_id         TEXT        NOT NULL,
    provider_kind       TEXT        NOT NULL,
    provider_run_ref    JSONB,                  -- null until the provider accepted the run
    parameters          JSONB       NOT NULL,
    idempotency_key     TEXT,
    request_fingerprint TEXT        NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    cancel_requested_at TIMESTAMPTZ,
    stream_resume       JSONB,                  -- where the provider's event stream resumes
    ingest_owner        TEXT,                   -- the replica that follows its provider stream
    ingest_lease_until  TIMESTAMPTZ ,                   -- ... until then, unless it renews
    ended               BOOLEAN     NOT NULL DEFAULT FALSE, -- true once the `end` event is stored
    FOREIGN KEY (tenant_id, job_id) REFERENCES ci_job (tenant_id, job_id)
);
CREATE UNIQUE INDEX ci_run_idempotency ON ci_run (tenant_id, job_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX ci_run_open ON ci_run (ended) WHERE NOT ended;
CREATE INDEX ci_run_by_job ON ci_run (tenant_id, job_id, created_at);

-- A run's events, in the order its watchers see them; `seq` is the SSE id.
CREATE TABLE ci_run_event (
    run_id     TEXT        NOT NULL REFERENCES ci_run (run_id),
    seq        BIGINT      NOT NULL,
    kind       TEXT        NOT NULL,  -- status | log | end
    data       JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Leases for background work that one replica at a time must do (name → holder until expiry).
CREATE TABLE ci_lease (
    name       TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
