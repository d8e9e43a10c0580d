-- Current state of every order: indexed columns for filtering, the whole
-- order as a JSON document (`doc`) so the shape lives in one place (the domain).
CREATE TABLE orders (
    id                  TEXT    PRIMARY KEY,
    customer_id         TEXT    NOT NULL,
    status              INTEGER NOT NULL,
    version             BIGINT  NOT NULL,
    request_id          TEXT,
    request_fingerprint TEXT,
    doc                 TEXT    NOT NULL,
    -- Idempotent registration is enforced here, not by check-then-insert.
    -- NULL request ids are distinct, so calls without one never collide.
    UNIQUE (customer_id, request_id)
);
CREATE INDEX orders_by_customer ON orders (customer_id, id);
CREATE INDEX orders_by_status ON orders (status, id);

-- Every version of every order: what watchers replay on resume.
CREATE TABLE order_versions (
    order_id TEXT   NOT NULL,
    version  BIGINT NOT NULL,
    doc      TEXT   NOT NULL,
    PRIMARY KEY (order_id, version)
);

-- Secrets the replicas must share, made once by whoever migrates first
-- (the page-token signing key).
CREATE TABLE service_keys (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
