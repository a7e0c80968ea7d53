-- Escrow shards (issue 14; comptroller.domain.escrow): a hot account (a namespace's, a tenant's) is
-- split into account_shards rows, each owning a part of the limit (cap_mc) and holding its own
-- settled and reserved money, so concurrent reserves lock different rows instead of one.
-- An account's totals are its own columns plus the sums over its shards. accounts.shards is the
-- number of shards (0: unsharded); shard_limit_mc is the limit the caps were last split from.
-- A hold keeps, beside each account id, where its money sits: -1 the account row, k its shard k.

ALTER TABLE accounts ADD COLUMN shards integer NOT NULL DEFAULT 0 CHECK (shards BETWEEN 0 AND 256);
ALTER TABLE accounts ADD COLUMN shard_limit_mc bigint;
-- A sharded account's own columns are only part of its totals (the shards hold the rest).
ALTER TABLE accounts DROP CONSTRAINT accounts_reserved_mc_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_reserved_mc_check CHECK (reserved_mc >= 0 OR shards > 0);
ALTER TABLE accounts SET (fillfactor = 70);
ALTER TABLE reservations ADD COLUMN shard_ids integer[];

CREATE TABLE account_shards (
    account_id bigint NOT NULL,
    shard integer NOT NULL CHECK (shard >= 0),
    cap_mc bigint NOT NULL DEFAULT 0 CHECK (cap_mc >= 0),
    settled_mc bigint NOT NULL DEFAULT 0,
    reserved_mc bigint NOT NULL DEFAULT 0 CHECK (reserved_mc >= 0),
    PRIMARY KEY (account_id, shard)) WITH (fillfactor = 50);

-- Hold p_amount on every account of p_ids (ascending id, so shard locks come in one global order):
-- an unsharded one (p_starts[i] < 0, its row already locked by the caller) on its row; a sharded one
-- on its first shard with room from p_starts[i] on, cyclically, preferring a shard no one holds
-- (SKIP LOCKED), else waiting for one. Returns the shard of each (-1: the row). When a sharded
-- account has no shard with room it raises 'escrow_dry' (SQLSTATE P0001): the caller rolls back and
-- rebalances under the account's lock (comptroller.domain.escrow.hold).
CREATE FUNCTION escrow_hold(p_ids bigint[], p_starts integer[], p_amount bigint) RETURNS integer[]
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    i integer;
    picked integer;
    taken integer[] := p_starts;
BEGIN
    FOR i IN SELECT o FROM unnest(p_ids) WITH ORDINALITY AS u(id, o) ORDER BY id LOOP
        IF p_starts[i] < 0 THEN
            UPDATE accounts SET reserved_mc = reserved_mc + p_amount WHERE id = p_ids[i];
            CONTINUE;
        END IF;
        SELECT shard INTO picked FROM account_shards
            WHERE account_id = p_ids[i] AND cap_mc - settled_mc - reserved_mc >= p_amount
            ORDER BY shard < p_starts[i], shard LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF picked IS NULL THEN
            SELECT shard INTO picked FROM account_shards
                WHERE account_id = p_ids[i] AND cap_mc - settled_mc - reserved_mc >= p_amount
                ORDER BY shard < p_starts[i], shard LIMIT 1 FOR UPDATE;
        END IF;
        IF picked IS NULL THEN
            RAISE EXCEPTION 'escrow_dry' USING DETAIL = 'account ' || p_ids[i];
        END IF;
        UPDATE account_shards SET reserved_mc = reserved_mc + p_amount
            WHERE account_id = p_ids[i] AND shard = picked;
        taken[i] := picked;
    END LOOP;
    RETURN taken;
END $$;

-- Add p_settled[i] to settled_mc and p_reserved[i] to reserved_mc of account p_ids[i]'s row
-- (p_shards[i] < 0) or of its shard p_shards[i], in ascending (account, shard) order.
CREATE FUNCTION escrow_apply(p_ids bigint[], p_shards integer[], p_settled bigint[], p_reserved bigint[])
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM unnest(p_ids, p_shards, p_settled, p_reserved) AS u(id, shard, settled, reserved)
             ORDER BY id, shard LOOP
        IF r.shard < 0 THEN
            UPDATE accounts SET settled_mc = settled_mc + r.settled, reserved_mc = reserved_mc + r.reserved
                WHERE id = r.id;
        ELSE
            UPDATE account_shards SET settled_mc = settled_mc + r.settled, reserved_mc = reserved_mc + r.reserved
                WHERE account_id = r.id AND shard = r.shard;
        END IF;
    END LOOP;
END $$;
