-- The ledger: budgets, accounts, reservations, the usage log, events and defense state.
-- Money is bigint millicents; times are timestamptz (UTC); keys sort bytewise (COLLATE "C"),
-- as Python sorts strings, so "ordered by id" means the same in every backend.

CREATE TABLE meta (key text COLLATE "C" PRIMARY KEY, value bigint NOT NULL);
INSERT INTO meta VALUES ('budgets_version', 0);

CREATE TABLE budgets (
    id text COLLATE "C" PRIMARY KEY,
    level text COLLATE "C" NOT NULL,
    scope text COLLATE "C" NOT NULL,
    period text NOT NULL,
    timezone text NOT NULL,
    limit_mc bigint NOT NULL CHECK (limit_mc >= 0),
    alerts text NOT NULL);
CREATE INDEX budgets_level_scope ON budgets (level, scope);

-- Any change to budgets bumps meta.budgets_version in the same transaction, so a replica's
-- cache of parsed budgets is checked against it inside every reserve. The function keeps the
-- schema it was created in (SET search_path FROM CURRENT), so writes from any session work.
CREATE FUNCTION bump_budgets_version() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'budgets_version';
    RETURN NULL;
END $$;
CREATE TRIGGER budgets_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON budgets
    FOR EACH STATEMENT EXECUTE FUNCTION bump_budgets_version();

CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    budget_id text COLLATE "C" NOT NULL,
    scope text COLLATE "C" NOT NULL,
    period_key text COLLATE "C" NOT NULL,
    settled_mc bigint NOT NULL DEFAULT 0,
    reserved_mc bigint NOT NULL DEFAULT 0 CHECK (reserved_mc >= 0),
    alert_pct_fired integer NOT NULL DEFAULT 0,
    UNIQUE (budget_id, scope, period_key));

CREATE TABLE reservations (
    id text COLLATE "C" PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    namespace text NOT NULL, tenant text NOT NULL, agent text NOT NULL,
    conversation text, task text, phase text,
    model text NOT NULL,
    ceiling_mc bigint NOT NULL CHECK (ceiling_mc >= 0),
    input_tokens_max bigint NOT NULL,
    output_tokens_max bigint NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'settled', 'released', 'expired')),
    account_ids bigint[] NOT NULL);
CREATE INDEX reservations_pending ON reservations (expires_at) WHERE state = 'pending';

CREATE TABLE usage_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reservation_id text COLLATE "C" NOT NULL UNIQUE,
    idempotency_key text NOT NULL,
    namespace text NOT NULL, tenant text NOT NULL, agent text NOT NULL,
    conversation text, task text, phase text,
    model text NOT NULL,
    reserved_at timestamptz NOT NULL,
    resolved_at timestamptz NOT NULL,
    input_tokens bigint NOT NULL, output_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL, cache_write_tokens bigint NOT NULL, cache_write_1h_tokens bigint NOT NULL,
    cost_mc bigint NOT NULL,
    ceiling_mc bigint NOT NULL,
    outcome text NOT NULL);

CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts timestamptz NOT NULL,
    kind text NOT NULL, code text NOT NULL, level text, scope text,
    detail json NOT NULL);
CREATE INDEX events_kind ON events (kind, id);

-- Defense state (breakers, kill switches, loop and retry counters, runs): one row per
-- (kind, key), with a version for compare-and-set; record is a flat JSON object kept as text.
CREATE TABLE states (
    kind text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    record json NOT NULL,
    PRIMARY KEY (kind, key));
