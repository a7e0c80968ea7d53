-- Gateway API keys beside the ledger, so every replica verifies and revokes the same keys.
-- Only the SHA-256 digest of a key is kept (comptroller.storage.keys), never the key.

CREATE TABLE api_keys (
    id text COLLATE "C" PRIMARY KEY,
    digest text NOT NULL,
    tenant text COLLATE "C" NOT NULL,
    agent text,
    name text NOT NULL,
    admin boolean NOT NULL,
    models json,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at, id);
