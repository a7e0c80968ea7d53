-- Wallets (DESIGN.md rule 10): double-entry transfers between accounts (agent and tenant wallets,
-- platform revenue, provider cost, infra), idempotent by the caller's transfer id
-- (comptroller.storage.transfers_postgres). The ledger's budget accounts are unchanged.

CREATE TABLE wallet_accounts (
    id text COLLATE "C" PRIMARY KEY,
    debits_mc bigint NOT NULL DEFAULT 0 CHECK (debits_mc >= 0),
    credits_mc bigint NOT NULL DEFAULT 0 CHECK (credits_mc >= 0),
    floor_mc bigint);

CREATE TABLE wallet_transfers (
    seq bigserial PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    debit_account text COLLATE "C" NOT NULL,
    credit_account text COLLATE "C" NOT NULL,
    amount_mc bigint NOT NULL CHECK (amount_mc > 0),
    kind text NOT NULL,
    ts timestamptz NOT NULL,
    ref text NOT NULL,
    CHECK (debit_account <> credit_account));
CREATE INDEX wallet_transfers_debit ON wallet_transfers (debit_account);
CREATE INDEX wallet_transfers_credit ON wallet_transfers (credit_account);
