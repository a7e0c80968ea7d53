-- Group commit (issue 14 item 1, the batching option): the reserves (and the settles) that one store's
-- callers make at the same moment run as one server call in one transaction with one commit, each item
-- with its own answer. Same plain cases as ledger_reserve / ledger_settle (migration 0008); an item
-- outside them writes nothing and answers 'general', and the store runs it alone. Lock order as
-- everywhere: reservations (ascending id), accounts (ascending id), shards (ascending account, shard).
-- Statements run once per batch, not once per item: the accounts and shards a batch shares are locked
-- and updated once with the batch's sums.

-- Reserve n items (p_now: the latest of their times, for the due-lease test). Per item (arrays of n): the time
-- it is made at, reservation id, idempotency key, attribution, model,
-- ceiling, token bounds, lease end, sent, shared, key id. Per account of an item (flat arrays, grouped by
-- item in item order): p_item the item's index (1-based), the account id, its budget's limit as read at
-- budgets version p_version, and the shard to try first (-1: unsharded). The items are decided in order,
-- each against the totals the earlier admitted items left. Returns per item its status (as
-- ledger_reserve's, plus 'general' for a key an earlier item of the batch has) and its key's
-- reservation id ('existing'), and per flat entry the account's settled, reserved and alert_pct_fired
-- before that item's hold. A sharded account's holds of one batch sit on one shard with room for their
-- sum, else each on a shard with room for it; with none it raises 'escrow_dry' and nothing is written
-- (the store runs the items alone, and they rebalance).
CREATE FUNCTION ledger_reserve_batch(
    p_version bigint, p_now timestamptz, p_created timestamptz[], p_ids text[], p_keys text[], p_namespaces text[], p_tenants text[],
    p_agents text[], p_conversations text[], p_tasks text[], p_phases text[], p_models text[],
    p_ceilings bigint[], p_input_max bigint[], p_output_max bigint[], p_expires timestamptz[],
    p_sent boolean[], p_shared boolean[], p_key_ids text[],
    p_item integer[], p_accounts bigint[], p_limits bigint[], p_starts integer[],
    OUT statuses text[], OUT existing text[], OUT settled bigint[], OUT reserved bigint[], OUT fired integer[])
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n integer := cardinality(p_ids);
    m integer := cardinality(p_accounts);
    stale boolean;
    due boolean;
    u_ids bigint[];          -- the batch's accounts, ascending id, with their totals and shard facts
    u_set bigint[];
    u_res bigint[];
    u_fired integer[];
    u_shards integer[];
    u_slim bigint[];
    u_add bigint[];          -- what this batch holds on each
    u_start integer[];
    u_pick integer[];
    shard_of integer[] := array_fill(-1, ARRAY[m]);
    i integer;
    j integer;
    k integer;
    lo integer := 1;
    hi integer;
    picked integer;
    is_general boolean;
    is_refused boolean;
BEGIN
    statuses := array_fill(NULL::text, ARRAY[n]);
    settled := array_fill(0::bigint, ARRAY[m]);
    reserved := array_fill(0::bigint, ARRAY[m]);
    fired := array_fill(0, ARRAY[m]);
    SELECT (SELECT value FROM meta WHERE key = 'budgets_version') IS DISTINCT FROM p_version,
           EXISTS (SELECT 1 FROM reservations WHERE state = 'pending' AND expires_at <= p_now),
           (SELECT array_agg(r.id ORDER BY u.o) FROM unnest(p_keys) WITH ORDINALITY AS u(key, o)
                LEFT JOIN reservations AS r ON r.idempotency_key = u.key)
        INTO stale, due, existing;
    IF stale OR due THEN
        statuses := array_fill(CASE WHEN stale THEN 'stale' ELSE 'due' END, ARRAY[n]);
        RETURN;
    END IF;
    PERFORM 1 FROM accounts WHERE id = ANY(p_accounts) AND shards = 0 ORDER BY id FOR UPDATE;
    SELECT array_agg(a.id ORDER BY a.id), array_agg(a.settled_mc + coalesce(s.settled_mc, 0) ORDER BY a.id),
           array_agg(a.reserved_mc + coalesce(s.reserved_mc, 0) ORDER BY a.id),
           array_agg(a.alert_pct_fired ORDER BY a.id), array_agg(a.shards ORDER BY a.id),
           array_agg(a.shard_limit_mc ORDER BY a.id)
        INTO u_ids, u_set, u_res, u_fired, u_shards, u_slim
        FROM accounts AS a LEFT JOIN LATERAL (
            SELECT sum(x.settled_mc)::bigint AS settled_mc, sum(x.reserved_mc)::bigint AS reserved_mc
            FROM account_shards AS x WHERE x.account_id = a.id) AS s ON a.shards > 0
        WHERE a.id = ANY(p_accounts);
    u_add := array_fill(0::bigint, ARRAY[coalesce(cardinality(u_ids), 0)]);
    u_start := array_fill(-1, ARRAY[coalesce(cardinality(u_ids), 0)]);
    u_pick := u_start;
    FOR i IN 1..n LOOP
        hi := lo;
        WHILE hi <= m AND p_item[hi] = i LOOP
            hi := hi + 1;
        END LOOP;
        hi := hi - 1;  -- the item's entries are lo..hi
        IF existing[i] IS NOT NULL THEN
            statuses[i] := 'existing';
        ELSIF i > 1 AND p_keys[i] = ANY(p_keys[1:i - 1]) THEN
            statuses[i] := 'general';
        ELSE
            is_general := false;
            is_refused := false;
            FOR j IN lo..hi LOOP
                k := array_position(u_ids, p_accounts[j]);
                IF k IS NULL THEN
                    is_general := true;
                    CONTINUE;
                END IF;
                settled[j] := u_set[k];
                reserved[j] := u_res[k];
                fired[j] := u_fired[k];
                IF (u_shards[k] > 0) <> (p_starts[j] >= 0)
                   OR (u_shards[k] > 0 AND u_slim[k] IS DISTINCT FROM p_limits[j]) THEN
                    is_general := true;
                ELSIF u_set[k] + u_res[k] + p_ceilings[i] > p_limits[j] THEN
                    is_refused := true;
                END IF;
            END LOOP;
            IF is_general THEN
                statuses[i] := 'general';
            ELSIF is_refused THEN
                statuses[i] := 'refused';
            ELSE
                statuses[i] := 'ok';
                FOR j IN lo..hi LOOP
                    k := array_position(u_ids, p_accounts[j]);
                    u_res[k] := u_res[k] + p_ceilings[i];
                    u_add[k] := u_add[k] + p_ceilings[i];
                    IF u_start[k] < 0 THEN
                        u_start[k] := p_starts[j];
                    END IF;
                END LOOP;
            END IF;
        END IF;
        lo := hi + 1;
    END LOOP;
    -- Hold each sharded account's sum on one shard with room (ascending account: the global shard order).
    FOR k IN 1..coalesce(cardinality(u_ids), 0) LOOP
        CONTINUE WHEN u_shards[k] = 0 OR u_add[k] = 0;
        UPDATE account_shards SET reserved_mc = reserved_mc + u_add[k]
            WHERE account_id = u_ids[k] AND shard = (
                SELECT shard FROM account_shards WHERE account_id = u_ids[k]
                    AND cap_mc - settled_mc - reserved_mc >= u_add[k]
                ORDER BY shard < u_start[k], shard LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING shard INTO picked;
        IF picked IS NULL THEN
            UPDATE account_shards SET reserved_mc = reserved_mc + u_add[k]
                WHERE account_id = u_ids[k] AND shard = (
                    SELECT shard FROM account_shards WHERE account_id = u_ids[k]
                        AND cap_mc - settled_mc - reserved_mc >= u_add[k]
                    ORDER BY shard < u_start[k], shard LIMIT 1 FOR UPDATE)
                RETURNING shard INTO picked;
        END IF;
        IF picked IS NOT NULL THEN
            u_pick[k] := picked;
            CONTINUE;
        END IF;
        -- No shard holds the sum: each item's hold on a shard with room for it, none waiting (an account's
        -- shards are then locked out of order); else the batch is dry and the store runs its items alone.
        FOR j IN 1..m LOOP
            CONTINUE WHEN p_accounts[j] <> u_ids[k] OR statuses[p_item[j]] <> 'ok';
            UPDATE account_shards SET reserved_mc = reserved_mc + p_ceilings[p_item[j]]
                WHERE account_id = u_ids[k] AND shard = (
                    SELECT shard FROM account_shards WHERE account_id = u_ids[k]
                        AND cap_mc - settled_mc - reserved_mc >= p_ceilings[p_item[j]]
                    ORDER BY shard < p_starts[j], shard LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING shard INTO picked;
            IF picked IS NULL THEN
                RAISE EXCEPTION 'escrow_dry' USING DETAIL = 'account ' || u_ids[k];
            END IF;
            shard_of[j] := picked;
        END LOOP;
    END LOOP;
    UPDATE accounts AS a SET reserved_mc = a.reserved_mc + d.amount
        FROM unnest(u_ids, u_add, u_shards) AS d(id, amount, shards)
        WHERE a.id = d.id AND d.shards = 0 AND d.amount > 0;
    FOR j IN 1..m LOOP
        IF statuses[p_item[j]] = 'ok' THEN
            k := array_position(u_ids, p_accounts[j]);
            IF u_shards[k] > 0 AND u_pick[k] >= 0 THEN
                shard_of[j] := u_pick[k];
            END IF;
        END IF;
    END LOOP;
    INSERT INTO reservations (id, idempotency_key, namespace, tenant, agent, conversation, task, phase, model,
                              ceiling_mc, input_tokens_max, output_tokens_max, created_at, expires_at, state,
                              account_ids, sent, conversation_shared, key_id, shard_ids)
        SELECT p_ids[g.o], p_keys[g.o], p_namespaces[g.o], p_tenants[g.o], p_agents[g.o], p_conversations[g.o],
               p_tasks[g.o], p_phases[g.o], p_models[g.o], p_ceilings[g.o], p_input_max[g.o], p_output_max[g.o],
               p_created[g.o], p_expires[g.o], 'pending',
               ARRAY(SELECT p_accounts[e.x] FROM generate_subscripts(p_item, 1) AS e(x) WHERE p_item[e.x] = g.o
                     ORDER BY e.x),
               p_sent[g.o], p_shared[g.o], p_key_ids[g.o],
               ARRAY(SELECT shard_of[e.x] FROM generate_subscripts(p_item, 1) AS e(x) WHERE p_item[e.x] = g.o
                     ORDER BY e.x)
        FROM generate_series(1, n) AS g(o) WHERE statuses[g.o] = 'ok';
END $$;

-- Settle n reservations (p_now: the latest of their times; per item: its time, id, cost, the usage's tokens) in their plain case, as
-- ledger_settle does: pending, lease not due, no lease due anywhere, no charge past a sharded hold, and
-- no alert threshold crossed by the batch's charges on any of the item's accounts. The money moves on
-- the rows or shards the holds name (each row or shard updated once, with the batch's sums), the usage
-- rows are written in item order and the reservations settled. Returns one row per settled item: its
-- index (1-based) and the reservation's columns as they were (RES_COLS, state 'pending'). An item with
-- no row (another's duplicate, not pending, any of the above) wrote nothing: the store settles it alone.
CREATE FUNCTION ledger_settle_batch(
    p_now timestamptz, p_resolved timestamptz[], p_ids text[], p_costs bigint[], p_input bigint[], p_output bigint[], p_cache_read bigint[],
    p_cache_write bigint[], p_cache_write_1h bigint[])
RETURNS TABLE (item integer, id text, idempotency_key text, namespace text, tenant text, agent text,
               conversation text, task text, phase text, model text, ceiling_mc bigint, input_tokens_max bigint,
               output_tokens_max bigint, created_at timestamptz, expires_at timestamptz, state text,
               account_ids bigint[], sent boolean, conversation_shared boolean, key_id text)
LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    locked text[];
BEGIN
    IF EXISTS (SELECT 1 FROM reservations AS d WHERE d.state = 'pending' AND d.expires_at <= p_now) THEN
        RETURN;  -- the sweep goes first: every item takes the general path
    END IF;
    SELECT array_agg(x.id) INTO locked FROM (
        SELECT r.id FROM reservations AS r WHERE r.id = ANY(p_ids) AND r.state = 'pending' AND r.expires_at > p_now
        ORDER BY r.id FOR UPDATE) AS x;
    IF locked IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM accounts AS a
        WHERE a.id IN (SELECT unnest(r.account_ids) FROM reservations AS r WHERE r.id = ANY(locked)) AND a.shards = 0
        ORDER BY a.id FOR UPDATE;
    PERFORM 1 FROM account_shards AS s
        WHERE (s.account_id, s.shard) IN (
            SELECT k.acc, r.shard_ids[k.n] FROM reservations AS r,
                   unnest(r.account_ids) WITH ORDINALITY AS k(acc, n)
            WHERE r.id = ANY(locked) AND r.shard_ids[k.n] >= 0)
        ORDER BY s.account_id, s.shard FOR UPDATE;
    RETURN QUERY
    WITH u AS (SELECT DISTINCT ON (v.id) v.id, v.o::integer AS o FROM unnest(p_ids) WITH ORDINALITY AS v(id, o)
               ORDER BY v.id, v.o),
    items AS (SELECT r.*, u.o, p_costs[u.o] AS cost FROM reservations AS r JOIN u ON u.id = r.id
              WHERE r.id = ANY(locked)),
    e AS (SELECT i.id AS rid, i.cost, i.ceiling_mc AS ceiling, k.acc, a.shards,
                 coalesce(i.shard_ids[k.n], -1) AS shard
          FROM items AS i CROSS JOIN LATERAL unnest(i.account_ids) WITH ORDINALITY AS k(acc, n)
          JOIN accounts AS a ON a.id = k.acc),
    charged AS (SELECT e.acc, sum(e.cost) AS total FROM e GROUP BY e.acc),
    crossing AS (
        SELECT a.id FROM charged AS c JOIN accounts AS a ON a.id = c.acc JOIN budgets AS b ON b.id = a.budget_id
        WHERE b.limit_mc > 0 AND EXISTS (
            SELECT 1 FROM json_array_elements_text(b.alerts::json) AS p(pct)
            WHERE p.pct::integer > a.alert_pct_fired
              AND (a.settled_mc + c.total
                   + coalesce((SELECT sum(s.settled_mc) FROM account_shards AS s
                               WHERE a.shards > 0 AND s.account_id = a.id), 0))::numeric * 100
                  >= p.pct::numeric * b.limit_mc)),
    bad AS (SELECT e.rid FROM e WHERE e.acc IN (SELECT c.id FROM crossing AS c) OR (e.shards > 0 AND e.cost > e.ceiling)),
    ok AS (SELECT * FROM items AS i WHERE i.id NOT IN (SELECT b.rid FROM bad AS b)),
    moves AS (SELECT e.acc, e.shard, sum(e.cost)::bigint AS ds, sum(e.ceiling)::bigint AS dr FROM e
              WHERE e.rid NOT IN (SELECT b.rid FROM bad AS b) GROUP BY e.acc, e.shard),
    on_rows AS (UPDATE accounts AS a SET settled_mc = a.settled_mc + m.ds, reserved_mc = a.reserved_mc - m.dr
                FROM moves AS m WHERE m.shard < 0 AND a.id = m.acc),
    on_shards AS (UPDATE account_shards AS s SET settled_mc = s.settled_mc + m.ds, reserved_mc = s.reserved_mc - m.dr
                  FROM moves AS m WHERE m.shard >= 0 AND s.account_id = m.acc AND s.shard = m.shard),
    resolved AS (UPDATE reservations AS r SET state = 'settled' FROM ok WHERE r.id = ok.id),
    logged AS (
        INSERT INTO usage_log (reservation_id, idempotency_key, namespace, tenant, agent, conversation, task, phase,
                               model, reserved_at, resolved_at, input_tokens, output_tokens, cache_read_tokens,
                               cache_write_tokens, cache_write_1h_tokens, cost_mc, ceiling_mc, outcome,
                               conversation_shared, key_id)
        SELECT ok.id, ok.idempotency_key, ok.namespace, ok.tenant, ok.agent, ok.conversation, ok.task, ok.phase,
               ok.model, ok.created_at, p_resolved[ok.o], p_input[ok.o], p_output[ok.o], p_cache_read[ok.o],
               p_cache_write[ok.o], p_cache_write_1h[ok.o], ok.cost, ok.ceiling_mc, 'settled',
               ok.conversation_shared, ok.key_id
        FROM ok ORDER BY ok.o)
    SELECT ok.o, ok.id, ok.idempotency_key, ok.namespace, ok.tenant, ok.agent, ok.conversation, ok.task, ok.phase,
           ok.model, ok.ceiling_mc, ok.input_tokens_max, ok.output_tokens_max, ok.created_at, ok.expires_at,
           'pending'::text, ok.account_ids, ok.sent, ok.conversation_shared, ok.key_id
    FROM ok ORDER BY ok.o;
END $$;
