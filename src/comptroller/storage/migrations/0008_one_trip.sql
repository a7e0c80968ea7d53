-- One round trip per reserve and per settle (issue 14 item 2): the common case of each runs as one
-- server function call in its own (autocommit) transaction. The decision rules stay in Python
-- (comptroller.domain.admission): the functions only apply the same tests to the rows they lock and
-- answer anything else with a status, so the caller takes the general path (storage/postgres.py).
-- Lock order as everywhere: reservations, accounts (ascending id), shards (ascending account, shard).
-- The functions plan their statements once per session (plan_cache_mode, PostgreSQL 12 or later): with
-- custom plans the planner took about a quarter of a backend's CPU (BENCHMARKS.md, issue 14).

-- Reserve p_ceiling on the accounts p_ids (the call's order; p_limits their budgets' limits as the caller
-- read them at budgets version p_version; p_starts the shard each sharded account tries first, -1 for an
-- unsharded one). Returns one row: the status, the idempotency key's reservation id (status 'existing'),
-- and each account's settled, reserved and alert_pct_fired before the hold (in p_ids' order). Statuses:
--   'ok'       held (the reservation row p_id is written, its holds on rows or shards);
--   'refused'  some account has settled + reserved + p_ceiling > limit: nothing written;
--   'stale'    the budgets changed since p_version;      'due'      a pending lease is due (sweep first);
--   'existing' the idempotency key is taken;            'general'  an account is unknown, its shard count
--              is not the caller's, or its caps were split from another limit (rebalance first).
-- A sharded account with no shard holding the ceiling raises 'escrow_dry' (escrow_hold): nothing is written.
CREATE FUNCTION ledger_reserve(
    p_version bigint, p_now timestamptz, p_ids bigint[], p_limits bigint[], p_starts integer[],
    p_id text, p_key text, p_namespace text, p_tenant text, p_agent text, p_conversation text, p_task text,
    p_phase text, p_model text, p_ceiling bigint, p_input_max bigint, p_output_max bigint,
    p_expires timestamptz, p_sent boolean, p_shared boolean, p_key_id text,
    OUT status text, OUT existing text, OUT settled bigint[], OUT reserved bigint[], OUT fired integer[])
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    stale boolean;
    due boolean;
    found_all boolean;
    general boolean;
    refused boolean;
BEGIN
    SELECT (SELECT value FROM meta WHERE key = 'budgets_version') IS DISTINCT FROM p_version,
           EXISTS (SELECT 1 FROM reservations WHERE state = 'pending' AND expires_at <= p_now),
           (SELECT id FROM reservations WHERE idempotency_key = p_key)
        INTO stale, due, existing;
    IF stale THEN
        status := 'stale';
        RETURN;
    END IF;
    IF due THEN
        status := 'due';
        RETURN;
    END IF;
    IF existing IS NOT NULL THEN
        status := 'existing';
        RETURN;
    END IF;
    PERFORM 1 FROM accounts WHERE id = ANY(p_ids) AND shards = 0 ORDER BY id FOR UPDATE;
    SELECT array_agg(t.settled ORDER BY u.o), array_agg(t.reserved ORDER BY u.o), array_agg(t.fired ORDER BY u.o),
           bool_and(t.id IS NOT NULL),
           bool_or((t.shards > 0) <> (u.start >= 0) OR (t.shards > 0 AND t.shard_limit IS DISTINCT FROM u.lim)),
           bool_or(t.settled + t.reserved + p_ceiling > u.lim)
        INTO settled, reserved, fired, found_all, general, refused
        FROM unnest(p_ids, p_limits, p_starts) WITH ORDINALITY AS u(id, lim, start, o)
        LEFT JOIN LATERAL (
            SELECT a.id, a.shards, a.shard_limit_mc AS shard_limit, a.alert_pct_fired AS fired,
                   a.settled_mc + coalesce(sum(s.settled_mc), 0)::bigint AS settled,
                   a.reserved_mc + coalesce(sum(s.reserved_mc), 0)::bigint AS reserved
            FROM accounts a LEFT JOIN account_shards s ON a.shards > 0 AND s.account_id = a.id
            WHERE a.id = u.id GROUP BY a.id) AS t ON true;
    IF NOT found_all OR general THEN
        status := 'general';
        RETURN;
    END IF;
    IF refused THEN
        status := 'refused';
        RETURN;
    END IF;
    INSERT INTO reservations (id, idempotency_key, namespace, tenant, agent, conversation, task, phase, model,
                              ceiling_mc, input_tokens_max, output_tokens_max, created_at, expires_at, state,
                              account_ids, sent, conversation_shared, key_id, shard_ids)
        VALUES (p_id, p_key, p_namespace, p_tenant, p_agent, p_conversation, p_task, p_phase, p_model, p_ceiling,
                p_input_max, p_output_max, p_now, p_expires, 'pending', p_ids, p_sent, p_shared, p_key_id,
                escrow_hold(p_ids, p_starts, p_ceiling));
    status := 'ok';
END $$;

-- Settle reservation p_id at p_now for p_cost with the usage's tokens, when it is the plain case: pending,
-- its lease not due, no lease due anywhere (the sweep goes first), a cost within the hold or no sharded
-- account (a charge past a hold rebalances), and no alert threshold crossed (an alert locks the account).
-- Then the money moves on the rows or shards the hold names, the usage row is written (outcome 'settled')
-- and the reservation is settled; status 'settled'. Anything else writes nothing: status 'general'.
-- Returns the reservation's columns as they were (storage/postgres_rows.py RES_COLS) beside the status.
CREATE FUNCTION ledger_settle(
    p_id text, p_now timestamptz, p_cost bigint, p_input bigint, p_output bigint, p_cache_read bigint,
    p_cache_write bigint, p_cache_write_1h bigint)
RETURNS TABLE (status text, id text, idempotency_key text, namespace text, tenant text, agent text,
               conversation text, task text, phase text, model text, ceiling_mc bigint, input_tokens_max bigint,
               output_tokens_max bigint, created_at timestamptz, expires_at timestamptz, state text,
               account_ids bigint[], sent boolean, conversation_shared boolean, key_id text)
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    r reservations%ROWTYPE;
    where_shards integer[];
BEGIN
    SELECT * INTO r FROM reservations AS x WHERE x.id = p_id AND x.state = 'pending' AND x.expires_at > p_now
        AND NOT EXISTS (SELECT 1 FROM reservations AS d WHERE d.state = 'pending' AND d.expires_at <= p_now)
        FOR UPDATE OF x;
    IF NOT FOUND THEN
        status := 'general';
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM 1 FROM accounts AS a WHERE a.id = ANY(r.account_ids) AND a.shards = 0 ORDER BY a.id FOR UPDATE;
    IF EXISTS (
        SELECT 1 FROM accounts AS a
        LEFT JOIN budgets AS b ON b.id = a.budget_id
        WHERE a.id = ANY(r.account_ids) AND (
            (a.shards > 0 AND p_cost > r.ceiling_mc)
            OR (b.limit_mc > 0 AND EXISTS (
                SELECT 1 FROM json_array_elements_text(b.alerts::json) AS p(pct)
                WHERE p.pct::integer > a.alert_pct_fired
                  AND (a.settled_mc + p_cost
                       + coalesce((SELECT sum(s.settled_mc) FROM account_shards AS s
                                   WHERE a.shards > 0 AND s.account_id = a.id), 0))::numeric * 100
                      >= p.pct::numeric * b.limit_mc)))) THEN
        status := 'general';
        RETURN NEXT;
        RETURN;
    END IF;
    where_shards := coalesce(r.shard_ids, array_fill(-1, ARRAY[cardinality(r.account_ids)]));
    PERFORM escrow_apply(r.account_ids, where_shards, array_fill(p_cost, ARRAY[cardinality(r.account_ids)]),
                         array_fill(-r.ceiling_mc, ARRAY[cardinality(r.account_ids)]));
    WITH settled AS (UPDATE reservations AS x SET state = 'settled' WHERE x.id = p_id)
    INSERT INTO usage_log (reservation_id, idempotency_key, namespace, tenant, agent, conversation, task, phase,
                           model, reserved_at, resolved_at, input_tokens, output_tokens, cache_read_tokens,
                           cache_write_tokens, cache_write_1h_tokens, cost_mc, ceiling_mc, outcome,
                           conversation_shared, key_id)
        VALUES (r.id, r.idempotency_key, r.namespace, r.tenant, r.agent, r.conversation, r.task, r.phase, r.model,
                r.created_at, p_now, p_input, p_output, p_cache_read, p_cache_write, p_cache_write_1h, p_cost,
                r.ceiling_mc, 'settled', r.conversation_shared, r.key_id);
    RETURN QUERY SELECT 'settled', r.id, r.idempotency_key, r.namespace, r.tenant, r.agent, r.conversation, r.task,
        r.phase, r.model, r.ceiling_mc, r.input_tokens_max, r.output_tokens_max, r.created_at, r.expires_at,
        'pending'::text, r.account_ids, r.sent, r.conversation_shared, r.key_id;
END $$;

-- The general path's calls of the escrow functions plan their statements once per session too.
ALTER FUNCTION escrow_hold(bigint[], integer[], bigint) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION escrow_apply(bigint[], integer[], bigint[], bigint[]) SET plan_cache_mode = force_generic_plan;
