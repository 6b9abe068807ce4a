-- Listing runs newest first (GET /v1/runs) pages by keyset on (created_at, run_id).
CREATE INDEX ci_run_listing ON ci_run (tenant_id, created_at DESC, run_id DESC);
