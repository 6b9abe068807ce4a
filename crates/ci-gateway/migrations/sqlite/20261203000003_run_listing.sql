-- Listing runs newest first (GET /v1/runs) pages by keyset on (created_at, run_id).
-- SQLite keeps timestamps as RFC 3339 text whose fraction has no fixed width, so text order is
-- not time order below a second: the listing orders by a fixed-width rendering, to the
-- millisecond, and this index is on that same expression so the planner can use it.
CREATE INDEX ci_run_listing
    ON ci_run (tenant_id, strftime('%Y-%m-%dT%H:%M:%f', created_at) DESC, run_id DESC);
